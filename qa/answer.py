"""Ranked passages -> the sentence that answers, or an explicit "nothing answers this".

Each sentence of the best passages is scored on what it means (its cosine to the question, from
the sentence vectors computed at index time), on the rare question words it contains (IDF-weighted
coverage, also counting the sentence before it at a discount), on whether it holds the kind of
thing the question asks for (a number for "how many" or "what is the population", a date for
"when", a name for "who") and on its passage's rank. The best sentence is the answer if its
confidence clears the threshold; otherwise the articles are taken not to answer the question.
Weights and the threshold were tuned on training questions only (see bench/RESULTS.md).
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from .retrieval import Hit, Retriever
from .store import IndexData

# Sentence score = DENSE * cosine + (1 - DENSE) * coverage + TYPE * type match - RANK * passage number.
DENSE = 0.3
TYPE = 0.15
RANK = 0.1
PASSAGES = 3
# A sentence is also credited with CONTEXT x the coverage of itself and the sentence before it, when that
# is more: questions often restate one sentence and find their answer in the next ("... Ma Jianlong led
# charges outside the gate." "He was wounded by arrows ..."). SQuAD train answer accuracy 0.772 -> 0.784.
CONTEXT = 0.8
# Confidence = the best sentence's score + EVIDENCE * the top passage's cosine to the question:
# how well the best passage matches as a whole is the strongest single sign that it answers.
EVIDENCE = 2.0
# Taken off the confidence when the question asks for a number, date or name and the best sentence
# holds none: on training questions (SQuAD with the gold paragraph withheld, and the seed training
# questions) it separates answerable from unanswerable questions slightly better.
MISMATCH = 0.2

# --- what kind of answer a question asks for -------------------------------------------------

_NUMBER_WORDS = (r"one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|forty|fifty|"
                 r"sixty|seventy|eighty|ninety|hundreds?|thousands?|millions?|billions?|trillions?|dozens?|half|"
                 r"twice|double|triple|several")
_MONTHS = (r"january|february|march|april|may|june|july|august|september|october|november|december|"
           r"jan|feb|mar|apr|jun|jul|aug|sept?|oct|nov|dec")
_HAS_NUMBER = re.compile(rf"\d|\b(?:{_NUMBER_WORDS})\b", re.IGNORECASE)
_HAS_DATE = re.compile(
    rf"\b1\d{{3}}s?\b|\b20\d{{2}}s?\b|\b(?:{_MONTHS})\b|\b(?:mon|tues|wednes|thurs|fri|satur|sun)day\b|"
    r"\b(?:today|yesterday|tomorrow|tonight)\b|\bcentur(?:y|ies)\b|\b\d{1,2}(?:st|nd|rd|th)\b|\bdecades?\b|"
    r"\b(?:BC|AD|BCE|CE)\b|\b(?:last|next|this) (?:week|month|year)\b",
    re.IGNORECASE,
)
_NOT_QUANTITY = re.compile(r"\b(?:1[89]|20)\d{2}s?\b|\b\d+(?:st|nd|rd|th)\b", re.IGNORECASE)
_CAPITALISED = re.compile(r"\b[A-Z][\w'’.-]*")
_ASKS_NUMBER = re.compile(
    r"\bhow (?:many|much|large|big|long|old|far|tall|high|heavy|often|fast|wide|deep)\b|"
    r"\bwhat (?:percentage|percent|proportion|share|number|amount|size|fraction)\b",
    re.IGNORECASE,
)
# "What is the population of ...", "what was its budget": nouns that are measured in numbers.
_QUANTITIES = (r"population|budget|gdp|cost|costs|price|prices|rate|size|area|value|worth|length|height|width|depth|"
               r"weight|distance|capacity|speed|temperature|salary|wage|revenue|income|turnover|average|total|"
               r"minimum|maximum|percentage|proportion|share|sum|score|ratio|output|volume|duration")
_ASKS_QUANTITY = re.compile(
    rf"\bwhat(?:'s| is| was| are| were| will be)?(?: the| its| their| his| her| this| that)?(?: [\w'’-]+){{0,2}} (?:{_QUANTITIES})\b",
    re.IGNORECASE,
)
_ASKS_DATE = re.compile(
    r"\bwhen\b|\b(?:what|which) (?:year|years|date|day|month|century|decade|time|season)\b|\bsince when\b",
    re.IGNORECASE,
)
_ASKS_NAME = re.compile(r"\bwho\b|\bwhom\b|\bwhose\b|\bwhere\b", re.IGNORECASE)
# Words that say what form the answer takes rather than what it is about: "how MANY", "what YEAR",
# "the NAME of". An answering sentence need not repeat them, so they do not count in coverage.
_FORM_WORDS = re.compile(
    r"\bhow (\w+)|\b(?:what|which) (year|years|date|day|month|time|kind|type|sort|name|number|percentage|amount)\b|"
    r"\b(name|named|called|kind|type|full)\b",
    re.IGNORECASE,
)


def answer_kind(question: str) -> str | None:
    """'number', 'date', 'name' or None (anything else) for the answer a question asks for."""
    if _ASKS_NUMBER.search(question) or _ASKS_QUANTITY.search(question):
        return "number"
    if _ASKS_DATE.search(question):
        return "date"
    if _ASKS_NAME.search(question):
        return "name"
    return None


def holds_kind(kind: str | None, sentence: str, question: str) -> bool | None:
    """Whether a sentence holds the kind of answer asked for (None when the question sets none)."""
    if kind == "number":
        # A year or an ordinal ("in 2020", "the 40th anniversary") is not the quantity asked for.
        return bool(_HAS_NUMBER.search(_NOT_QUANTITY.sub(" ", sentence)))
    if kind == "date":
        return bool(_HAS_DATE.search(sentence))
    if kind == "name":
        asked = _asked_words(question)
        return any(m.group(0).lower().strip(".'’") not in asked
                   for m in _CAPITALISED.finditer(sentence) if m.start() > 0)
    return None


@functools.lru_cache(maxsize=64)
def _asked_words(question: str) -> frozenset[str]:
    """The question's words, lower-case: a name among them is not an answer. Cached: every sentence asks."""
    return frozenset(w.lower().strip(".'’") for w in re.findall(r"[\w'’.-]+", question))


def form_words(question: str) -> set[str]:
    """The question's words that name the answer's form, lower-case, unstemmed."""
    found: set[str] = set()
    for match in _FORM_WORDS.finditer(question):
        found.update(g.lower() for g in match.groups() if g)
    return found


# --- scoring -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """The answering sentence: hits[passage] holds it, at article offsets [start, end)."""

    text: str
    passage: int
    start: int
    end: int
    score: float  # compared with the threshold
    span: tuple[int, int] | None = None  # the exact answer words, article offsets inside [start, end)

    @property
    def words(self) -> str | None:
        """The exact answer words (the text at `span`), or None without a reader."""
        return None if self.span is None else self.text[self.span[0] - self.start:self.span[1] - self.start]


@dataclass(frozen=True)
class SentenceScore:
    passage: int
    row: int  # sentence row in the index
    dense: float
    coverage: float  # IDF-weighted share of the question's terms the sentence contains
    score: float
    kind_match: bool | None = None  # holds the kind of answer asked for; None if no kind is asked


# A sentence that may answer: passage number, sentence row, cosine, coverage, its score without the answer kind, text.
_Candidate = tuple[int, int, float, float, float, str]


def score_sentences(query: np.ndarray, terms: list[str], hits: list[Hit], data: IndexData, retriever: Retriever,
                    passages: int = PASSAGES, dense_weight: float = DENSE, question: str = "",
                    type_weight: float = TYPE, rank_weight: float = RANK, context: float = CONTEXT,
                    best_only: bool = False, exclude: frozenset[tuple[str, int, int]] = frozenset()) -> list[SentenceScore]:
    """Score each sentence of the top passages by meaning, shared rare words, answer kind and rank; best first.

    `question` defaults to the text `terms` came from (Lexicon.terms keeps it). With `best_only` the list
    holds the best sentence alone, and the answer kind is checked in no more sentences than that takes.
    Sentences in `exclude` (doc_id, start, end) are not candidates.
    """
    question = question or getattr(terms, "text", "")
    form = set(retriever.lexicon.terms(" ".join(form_words(question)))) if question else set()
    # The question's terms in its own order, each once: coverage sums are the same under any hash seed.
    unique = list(dict.fromkeys(terms))
    content = [t for t in unique if t not in form] or unique
    weights = {t: retriever.idf.get(t, retriever.default_idf) for t in content}
    total = sum(weights.values())
    kind = answer_kind(question) if question else None
    asked = set(terms)
    candidates: list[_Candidate] = []
    seen: set[int] = set()
    for number, hit in enumerate(hits[:passages]):
        first, last = data.chunk_sentences[hit.row]
        rows = [r for r in range(first, last) if r not in seen]
        seen.update(rows)
        if not rows:
            continue
        cosines = (data.sentence_vectors[rows] @ query).tolist()  # Python floats: what float() of each gives
        for row, cosine in zip(rows, cosines):
            doc_id, start, end = data.sentences[row]
            doc = data.documents[doc_id]
            text = doc.text[start:end]
            present = retriever.sentence_terms[row]
            # A headline, or a sentence made only of the question's own words, answers nothing.
            if text == doc.title or present <= asked or (exclude and data.sentences[row] in exclude):
                continue
            coverage = sum(w for t, w in weights.items() if t in present) / total if total else 0.0
            if context and row > 0 and data.sentences[row - 1][0] == doc_id:
                both = present | retriever.sentence_terms[row - 1]
                held = sum(w for t, w in weights.items() if t in both) / total if total else 0.0
                coverage = max(coverage, context * held)
            partial = dense_weight * cosine + (1 - dense_weight) * coverage
            candidates.append((number, row, cosine, coverage, partial, text))
    # Checking the answer kind (a regex search of the sentence) is the slow part, and it can only add
    # type_weight. For the best sentence alone, sentences are checked in the order of the best score each could
    # reach: once the next one could not beat the best found, none after it could either.
    bonus = max(type_weight, 0.0) if kind else 0.0

    def reach(candidate: _Candidate) -> tuple[float, int, int]:
        """The best sort key (see _order) the candidate's score could have."""
        number, row, _, _, partial, _ = candidate
        return -(partial + bonus - rank_weight * number), number, row

    if best_only:
        candidates.sort(key=reach)
    scored: list[SentenceScore] = []
    best: SentenceScore | None = None
    for candidate in candidates:
        if best_only and best is not None and reach(candidate) >= _order(best):
            break
        number, row, cosine, coverage, partial, text = candidate
        match = holds_kind(kind, text, question)
        score = partial + (type_weight if match else 0.0) - rank_weight * number
        scored.append(SentenceScore(number, row, cosine, coverage, score, match))
        if best is None or _order(scored[-1]) < _order(best):
            best = scored[-1]
    if best_only:
        return [] if best is None else [best]
    scored.sort(key=_order)
    return scored


def _order(sentence: SentenceScore) -> tuple[float, int, int]:
    """Sort key of scored sentences: best first, ties in passage and sentence order."""
    return -sentence.score, sentence.passage, sentence.row


def choose(query: np.ndarray, terms: list[str], hits: list[Hit], data: IndexData, retriever: Retriever,
           threshold: float, question: str = "", evidence: float = EVIDENCE, mismatch: float = MISMATCH,
           exclude: frozenset[tuple[str, int, int]] = frozenset()) -> Answer | None:
    """The best sentence if it clears the threshold; None means the articles do not answer.

    `exclude` holds sentences (doc_id, start, end) that may not be the answer (see Assistant._answered_before).
    """
    scored = score_sentences(query, terms, hits, data, retriever, question=question or getattr(terms, "text", ""),
                             best_only=True, exclude=exclude)
    if not scored:
        return None
    best = scored[0]
    confidence = best.score + evidence * float(data.vectors[hits[0].row] @ query)
    if best.kind_match is False:
        confidence -= mismatch
    if confidence < threshold:
        return None
    doc_id, start, end = data.sentences[best.row]
    return Answer(data.documents[doc_id].text[start:end], best.passage, start, end, confidence)


# --- reading -----------------------------------------------------------------------------------
# With the reader on, the sentence scores above only shortlist: the READ_SENTENCES best sentences of the
# READ_PASSAGES best passages are read against the question, and
#     score = reader logit + PRIOR x shortlist score - PASSAGE x the passage's retrieval rank (from 0)
# decides the answer, the passage order and abstention. The reader costs about 2-3 ms a sentence on 2 cores,
# so the shortlist is what bounds the latency. All three fitted on held-out SQuAD train articles (qa tune-reader:
# 1,600 questions; overall right 0.777 at the fitted threshold). The best fit read 12 sentences (PRIOR 3) for
# 0.0004 more; the cheapest setting within 0.001 of the best is kept, and 6 sentences cost half as much.
READ_PASSAGES = 5
READ_SENTENCES = 6
PRIOR = 5.0
PASSAGE = 1.5


@dataclass(frozen=True)
class ReadSentence:
    """A shortlisted sentence after reading: passage number, sentence row, scores and answer span."""

    passage: int
    row: int
    prior: float  # the shortlist score (score_sentences)
    logit: float  # the reader's
    span: tuple[int, int]  # article offsets
    score: float  # logit + PRIOR * prior - PASSAGE * passage: what is compared


def read(query: np.ndarray, terms: list[str], hits: list[Hit], data: IndexData, retriever: Retriever, reader: Any,
         question: str, passages: int = READ_PASSAGES, limit: int = READ_SENTENCES,
         prior: float = PRIOR, passage_weight: float = PASSAGE,
         exclude: frozenset[tuple[str, int, int]] = frozenset()) -> list[ReadSentence]:
    """Read the shortlisted sentences of the best passages; best first. Sentences in `exclude` are not read."""
    shortlist = score_sentences(query, terms, hits, data, retriever, passages=passages, question=question,
                                exclude=exclude)[:limit]
    if not shortlist:
        return []
    texts = []
    for scored in shortlist:
        doc_id, start, end = data.sentences[scored.row]
        texts.append(data.documents[doc_id].text[start:end])
    readings = reader.read(question, texts)
    out = []
    for scored, reading in zip(shortlist, readings):
        start = data.sentences[scored.row][1]
        out.append(ReadSentence(scored.passage, scored.row, scored.score, reading.logit,
                                (start + reading.start, start + reading.end),
                                reading.logit + prior * scored.score - passage_weight * scored.passage))
    out.sort(key=lambda r: (-r.score, r.passage, r.row))
    return out


def reorder(hits: list[Hit], readings: list[ReadSentence]) -> tuple[list[Hit], dict[int, int]]:
    """Passages that had a sentence read come first, by their best reading; the rest keep their order.

    Returns the new order and where each old passage number went.
    """
    best: dict[int, float] = {}
    for r in readings:
        best[r.passage] = max(best.get(r.passage, -math.inf), r.score)
    read_first = sorted(best, key=lambda n: (-best[n], n))
    order = read_first + [n for n in range(len(hits)) if n not in best]
    return [hits[n] for n in order], {old: new for new, old in enumerate(order)}


def choose_read(readings: list[ReadSentence], data: IndexData, moved: dict[int, int], threshold: float) -> Answer | None:
    """The best read sentence, with its span, if its score clears the threshold."""
    if not readings or readings[0].score < threshold:
        return None
    best = readings[0]
    doc_id, start, end = data.sentences[best.row]
    text = data.documents[doc_id].text[start:end]
    span = best.span if start <= best.span[0] < best.span[1] <= end else None
    return Answer(text, moved.get(best.passage, best.passage), start, end, best.score, span)
