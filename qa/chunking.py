"""Pure functions: cleaned article text -> sentence spans -> passages with character offsets."""

from __future__ import annotations

import re
from dataclasses import dataclass

Span = tuple[int, int]


@dataclass(frozen=True)
class Chunk:
    """A passage of one article: text == article_text[start:end]."""

    doc_id: str
    position: int  # 0-based order of the passage within its article
    start: int
    end: int
    text: str
    sentences: tuple[Span, ...]  # absolute offsets of the sentences the passage holds


# Words after which a full stop does not end a sentence.
_ABBREVIATIONS = frozenset(
    """mr mrs ms dr prof sr jr st mt no nos vs etc e.g i.e al fig figs approx dept est govt inc
    ltd co corp bros gen gov lt col sgt capt rep sen hon rev jan feb mar apr jun jul aug sep sept
    oct nov dec u.s u.k u.n a.m p.m""".split()
)
# A candidate boundary: terminal punctuation, optional closing quotes or brackets, whitespace.
# It starts only where a run of punctuation starts: tried at every dot of a long run with no space
# after it, each try read the rest of the run, in time quadratic in the run's length. A try from
# inside a run would end where the one from its start did, so no boundary is lost.
_BOUNDARY = re.compile(r"(?<![.!?…])[.!?…]+[\"'”’)\]]*\s+")
_PARAGRAPH = re.compile(r"\S(?:.*?\S)?(?=\n\s*\n|\s*\Z)", re.DOTALL)


def paragraph_spans(text: str) -> list[Span]:
    """Spans of blank-line-separated paragraphs, trimmed of surrounding whitespace."""
    return [(m.start(), m.end()) for m in _PARAGRAPH.finditer(text)]


def _ends_with_abbreviation(before: str) -> bool:
    word = before.rsplit(None, 1)[-1] if before.strip() else ""
    word = word.lstrip("\"'“‘([").rstrip(".").lower()
    # A single letter before a full stop is an initial ("Xi J. Ping", "U.").
    return word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())


def sentence_spans(text: str, start: int = 0, end: int | None = None) -> list[Span]:
    """Sentence spans within text[start:end]; boundaries need a capital, digit or quote next."""
    end = len(text) if end is None else end
    spans: list[Span] = []
    begin = start
    for match in _BOUNDARY.finditer(text, start, end):
        stop = match.end()
        if stop >= end:
            break
        following = text[stop]
        if not (following.isupper() or following.isdigit() or following in "\"'“‘(["):
            continue
        # Only the last word matters: look at a short window, not the whole sentence so far.
        if text[match.start()] == "." and _ends_with_abbreviation(text[max(begin, match.start() - 64):match.start()]):
            continue
        spans.append((begin, match.start() + len(match.group().rstrip())))
        begin = stop
    tail = text[begin:end].rstrip()
    if tail.strip():
        spans.append((begin, begin + len(tail)))
    return spans


def _split_long(text: str, span: Span, max_chars: int) -> list[Span]:
    """Cut a sentence longer than max_chars at word boundaries."""
    start, end = span
    pieces = []
    while end - start > max_chars:
        cut = text.rfind(" ", start + 1, start + max_chars)
        cut = cut if cut > start else start + max_chars
        pieces.append((start, cut))
        start = cut + 1 if text[cut:cut + 1] == " " else cut
    pieces.append((start, end))
    return pieces


def sentence_units(text: str, max_chars: int = 700) -> list[tuple[int, int, int]]:
    """(start, end, paragraph number) of every sentence, long ones cut to max_chars."""
    units: list[tuple[int, int, int]] = []
    for number, (p_start, p_end) in enumerate(paragraph_spans(text)):
        for span in sentence_spans(text, p_start, p_end):
            units.extend((s, e, number) for s, e in _split_long(text, span, max_chars))
    return units


def chunk_text(doc_id: str, text: str, max_chars: int = 700, min_chars: int = 250, overlap: int = 1) -> list[Chunk]:
    """Pack whole sentences into passages of at most max_chars, never across articles.

    A paragraph break closes a passage that already has min_chars; a passage closed inside a
    paragraph because it is full starts the next one with its last `overlap` sentences.
    """
    units = sentence_units(text, max_chars)
    chunks: list[Chunk] = []
    current: list[tuple[int, int, int]] = []

    def emit() -> None:
        start, end = current[0][0], current[-1][1]
        chunks.append(Chunk(doc_id, len(chunks), start, end, text[start:end], tuple((s, e) for s, e, _ in current)))

    for unit in units:
        if current:
            too_long = unit[1] - current[0][0] > max_chars
            new_paragraph = unit[2] != current[-1][2]
            if new_paragraph and (too_long or current[-1][1] - current[0][0] >= min_chars):
                emit()
                current = []
            elif too_long:
                emit()
                carried = current[-overlap:] if 0 < overlap < len(current) else []
                # Keep the overlap only if it still leaves room for the new sentence.
                current = carried if carried and unit[1] - carried[0][0] <= max_chars else []
        current.append(unit)
    if current:
        emit()
    return chunks
