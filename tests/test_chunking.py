"""Sentence splitting and chunking: offsets map back to the text exactly."""

from __future__ import annotations


from hypothesis import given, settings
from hypothesis import strategies as st

from qa import documents
from qa.chunking import chunk_text, sentence_spans

from .conftest import SEEDS


def test_sentences_respect_abbreviations_and_quotes() -> None:
    text = 'Dr. Wong met Prof. Chen on Sept. 1. "It works," he said. Then U.S. firms came! Done?'
    got = [text[s:e] for s, e in sentence_spans(text)]
    assert got == ['Dr. Wong met Prof. Chen on Sept. 1.', '"It works," he said.', "Then U.S. firms came!", "Done?"]


def test_chunks_are_bounded_overlap_and_map_back() -> None:
    sentence = "Sentence number {} talks about the harbour and the bridge."
    text = " ".join(sentence.format(i) for i in range(40))
    chunks = chunk_text("d", text, max_chars=300, min_chars=100, overlap=1)
    assert len(chunks) > 3
    for chunk in chunks:
        assert text[chunk.start:chunk.end] == chunk.text
        assert len(chunk.text) <= 300
    # Consecutive passages share one sentence, so an answer on a cut is never lost.
    for a, b in zip(chunks, chunks[1:]):
        assert a.sentences[-1] == b.sentences[0]
    assert chunks[0].start == 0 and chunks[-1].end == len(text)


def test_short_paragraphs_merge_but_long_ones_stand_alone() -> None:
    text = "Heading\n\nA short paragraph.\n\n" + "A long paragraph sentence goes here. " * 12
    chunks = chunk_text("d", text.strip(), max_chars=700, min_chars=100, overlap=1)
    assert chunks[0].text.startswith("Heading\n\nA short paragraph.")


def test_an_overlong_sentence_is_cut_at_words() -> None:
    text = "word " * 400
    chunks = chunk_text("d", text.strip(), max_chars=200, min_chars=50, overlap=0)
    assert all(len(c.text) <= 200 for c in chunks)
    assert " ".join(c.text for c in chunks).split() == text.split()


def test_seed_chunks_map_back() -> None:
    folder = SEEDS
    for doc in documents.load_all(documents.article_files(folder)):
        chunks = chunk_text(doc.doc_id, doc.text)
        assert chunks
        for chunk in chunks:
            assert doc.text[chunk.start:chunk.end] == chunk.text
            assert all(chunk.start <= s < e <= chunk.end for s, e in chunk.sentences)


_words = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=400)


@settings(max_examples=150, deadline=None)
@given(_words, st.integers(100, 800), st.integers(0, 2))
def test_any_text_chunks_back_to_itself(text: str, max_chars: int, overlap: int) -> None:
    """Every non-space character of the text lands in some passage, at its own offset."""
    chunks = chunk_text("d", text, max_chars=max_chars, min_chars=max_chars // 3, overlap=overlap)
    covered = set()
    for chunk in chunks:
        assert text[chunk.start:chunk.end] == chunk.text
        covered.update(range(chunk.start, chunk.end))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=120), min_size=1, max_size=12))
def test_cleaning_keeps_every_ordinary_sentence(lines: list[str]) -> None:
    """Lines that are plain sentences survive cleaning, in order, whitespace-normalised."""
    sentences = [" ".join(("Line " + line).split()) + "." for line in lines]
    raw = "\n".join(sentences)
    try:
        doc = documents.parse(raw.encode(), "p", ".txt")
    except Exception:
        return
    kept = doc.text.split("\n\n")
    for sentence in sentences:
        normal = documents.clean_lines(sentence)
        if normal:
            assert normal[0] in kept
