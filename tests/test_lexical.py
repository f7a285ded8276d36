"""Stored index terms and the bm25s indexes built from them: same scores as tokenising the texts, kept safe on disk."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import bm25s
import numpy as np
import pytest

from qa import lexical, store
from qa.assistant import Assistant
from qa.errors import IndexCorrupt
from qa.indexing import build
from qa.lexical import B, K1, Lexicon, article_text, passage_text
from qa.retrieval import Retriever
from qa.store import IndexData

# Texts that stress the tokeniser: accents and ligatures, other scripts, numbers, underscores,
# a sentence of stop words only, a repeated word, a headline the text does not start with.
ODD_ARTICLES = {
    "odd_unicode": "Café naïve ﬁnance in Straße\n\nThe café in Straße 5 sold naïve art. 北京 2023年 saw ﬁne weather.\n",
    "odd_numbers": "Figures\n\n1,200 tonnes; 40,000 euros; 3.5 per cent; snake_case_word and x86_64.\n\nIt is what it is.\n",
    "odd_repeats": "Buffalo\n\nBuffalo buffalo Buffalo buffalo buffalo buffalo Buffalo buffalo. Of the and to a.\n",
}
QUESTIONS = ["What is the total area of the Hetao cooperation zone?", "Who sold naive art in the café?",
             "how many tonnes", "buffalo buffalo", "the of and", "", "北京 2023年", "x86_64 snake_case_word",
             "Shenzhen Hong Kong science park innovation"]


@pytest.fixture
def odd(docs_dir: Path, settings) -> Assistant:  # type: ignore[no-untyped-def]
    """The seed articles and the odd ones, indexed."""
    for name, text in ODD_ARTICLES.items():
        (docs_dir / f"{name}.txt").write_text(text, encoding="utf-8")
    assistant = Assistant(settings)
    assistant.build()
    return assistant


def from_text(data: IndexData, lexicon: Lexicon) -> dict:
    """What opening an index computed before terms were stored: everything tokenised from the texts."""
    passages = [lexicon.terms(passage_text(c)) for c in data.chunks]
    indexes = []
    for tokens in (passages, [lexicon.terms(article_text(d)) for d in data.documents.values()]):
        index = bm25s.BM25(k1=K1, b=B)
        index.index(tokens, show_progress=False)
        indexes.append(index)
    df: dict[str, int] = {}
    for terms in passages:
        for term in set(terms):
            df[term] = df.get(term, 0) + 1
    n = len(passages)
    return {"bm25": indexes, "idf": {t: float(np.log(1 + (n - f + 0.5) / (f + 0.5))) for t, f in df.items()},
            "sentences": [frozenset(lexicon.terms(data.documents[d].text[s:e])) for d, s, e in data.sentences]}


def old_scores(index, terms: list[str], n: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    ids = index.get_tokens_ids(terms)
    return np.asarray(index.get_scores_from_ids(ids), dtype=np.float32) if ids else np.zeros(n, dtype=np.float32)


def assert_scores_as_from_text(retriever: Retriever, data: IndexData, lexicon: Lexicon) -> None:
    expected = from_text(data, lexicon)
    passages, articles = expected["bm25"]
    article_of = [list(data.documents).index(c.doc_id) for c in data.chunks]
    questions = QUESTIONS + [data.documents[d].text[s:e] for d, s, e in data.sentences[::7]]
    scored = 0
    for question in questions:
        terms = lexicon.terms(question)
        scored += bool(retriever.lexical_scores(terms).any())
        assert np.array_equal(retriever.lexical_scores(terms), old_scores(passages, terms, len(data.chunks))), question
        assert np.array_equal(retriever.article_scores(terms),
                              old_scores(articles, terms, len(data.documents))[article_of]), question
    assert scored > len(questions) // 2
    assert retriever.idf == expected["idf"]
    assert list(retriever.sentence_terms) == expected["sentences"]


def test_stored_terms_score_exactly_as_tokenising_the_texts(odd: Assistant) -> None:
    data = store.load(odd.settings.index_dir)
    assert data.terms is not None and data.bm25 is not None
    assert set(ODD_ARTICLES) <= set(data.documents)
    assert data.bm25.fits(K1, B, len(data.chunks), len(data.documents))  # the stored indexes are the ones used
    lexicon = Lexicon()
    assert_scores_as_from_text(Retriever(data, lexicon), data, lexicon)
    # The same from the term ids alone (bm25s indexes not stored) and from the texts alone (no terms stored).
    assert_scores_as_from_text(Retriever(dataclasses.replace(data, bm25=None), lexicon), data, lexicon)
    assert_scores_as_from_text(Retriever(dataclasses.replace(data, terms=None, bm25=None), lexicon), data, lexicon)


def test_stored_bm25_built_with_other_parameters_is_not_used(odd: Assistant) -> None:
    data = store.load(odd.settings.index_dir)
    retriever = Retriever(data, k1=1.2, b=0.75)
    expected = bm25s.BM25(k1=1.2, b=0.75)
    lexicon = Lexicon()
    expected.index([lexicon.terms(passage_text(c)) for c in data.chunks], show_progress=False)
    terms = lexicon.terms("Hetao cooperation zone area")
    assert np.array_equal(retriever.lexical_scores(terms), old_scores(expected, terms, len(data.chunks)))


def whole_terms(data: IndexData) -> lexical.IndexTerms:
    sentences = [data.documents[d].text[s:e] for d, s, e in data.sentences]
    return lexical.tokenise(Lexicon(), data.documents.values(), data.chunks, sentences)


def assert_same_terms(a: lexical.IndexTerms, b: lexical.IndexTerms) -> None:
    assert list(a.vocabulary) == list(b.vocabulary)
    for kind in ("passages", "articles", "sentences"):
        x, y = getattr(a, kind), getattr(b, kind)
        assert np.array_equal(x.offsets, y.offsets) and np.array_equal(x.ids, y.ids), kind


def test_term_files_round_trip(odd: Assistant) -> None:
    data = store.load(odd.settings.index_dir)
    assert data.terms is not None
    assert_same_terms(data.terms, whole_terms(data))
    manifest = store.read_manifest(odd.settings.index_dir)
    assert manifest["lexicon_version"] == lexical.LEXICON_VERSION
    assert set(store.TERM_FILES + store.BM25_FILES) <= set(manifest["files"])
    ids, offsets = lexical.pack(data.terms)
    again = lexical.unpack(list(data.terms.vocabulary), ids, offsets, len(data.chunks), len(data.documents),
                           len(data.sentences))
    assert_same_terms(again, data.terms)


def test_incremental_builds_carry_terms_as_a_full_build_makes_them(odd: Assistant, tmp_path: Path) -> None:
    settings = odd.settings
    docs = settings.docs_dir
    (docs / "odd_new.txt").write_text("Brand new words\n\nZyzzyva quokkas outnumber the buffalo here.\n")
    (docs / "odd_repeats.txt").unlink()  # its words leave the vocabulary
    changed = docs / "odd_numbers.txt"
    changed.write_text(changed.read_text() + "\nAn edit adds 7 more tonnes.\n")
    report = build(settings, odd.embedder)
    assert sorted(report.embedded_documents) == ["odd_new", "odd_numbers"]
    incremental = store.load(settings.index_dir)
    full_settings = dataclasses.replace(settings, index_dir=tmp_path / "full")
    build(full_settings, odd.embedder, full=True)
    full = store.load(full_settings.index_dir)
    assert incremental.terms is not None and full.terms is not None
    assert_same_terms(incremental.terms, full.terms)
    assert "zyzzyva" in incremental.terms.vocabulary and "x86_64" in incremental.terms.vocabulary


def live_folder(index_dir: Path) -> Path:
    return index_dir / str(store.current_version(index_dir))


def test_a_damaged_term_file_is_refused_and_the_loaded_version_keeps_answering(odd: Assistant) -> None:
    settings = odd.settings
    before = odd.snapshot().version
    expected = odd.ask("how many tonnes").passages
    (settings.docs_dir / "odd_new.txt").write_text("Brand new words\n\nZyzzyva quokkas outnumber the buffalo.\n")
    build(settings, odd.embedder)  # a new version, not yet loaded by this assistant
    for filename in store.TERM_FILES + store.BM25_FILES[:1]:
        path = live_folder(settings.index_dir) / filename
        original = path.read_bytes()
        path.write_bytes(original[:-8])
        with pytest.raises(IndexCorrupt, match=rf"{filename}.*qa index --full"):
            odd.load()
        assert odd.snapshot().version == before
        assert odd.ask("how many tonnes").passages == expected
        path.write_bytes(original)
    odd.load()
    assert odd.snapshot().version != before


def test_term_arrays_that_do_not_fit_are_refused_even_unverified(odd: Assistant) -> None:
    folder = live_folder(odd.settings.index_dir)
    offsets = np.load(folder / "term_offsets.npy")
    np.save(folder / "term_offsets.npy", offsets[:-1])
    with pytest.raises(IndexCorrupt, match="qa index --full"):
        store.load(odd.settings.index_dir, verify=False)
    np.save(folder / "term_offsets.npy", offsets)
    np.save(folder / "term_ids.npy", np.full(int(offsets[-1]), 10**8, dtype=np.int32))
    with pytest.raises(IndexCorrupt, match="outside the vocabulary"):
        store.load(odd.settings.index_dir, verify=False)


@pytest.mark.parametrize("how", ["written before term files", "another lexicon version"])
def test_an_index_without_usable_terms_still_answers_and_the_next_build_adds_them(odd: Assistant, how: str) -> None:
    settings = odd.settings
    expected = [odd.ask(q).passages for q in QUESTIONS[:4]]
    folder = live_folder(settings.index_dir)
    manifest = json.loads((folder / store.MANIFEST).read_text())
    if how == "written before term files":
        del manifest["lexicon_version"]
        for filename in store.TERM_FILES + store.BM25_FILES:
            (folder / filename).unlink()
            del manifest["files"][filename]
    else:
        manifest["lexicon_version"] = lexical.LEXICON_VERSION + 1
    (folder / store.MANIFEST).write_text(json.dumps(manifest))
    old = store.load(settings.index_dir)
    assert old.terms is None and old.bm25 is None
    served = Assistant(settings, odd.embedder)
    served.load()
    assert [served.ask(q).passages for q in QUESTIONS[:4]] == expected

    embedded = odd.embedder.texts_embedded
    report = build(settings, odd.embedder)
    assert report.version is not None and report.embedded_documents == []
    assert odd.embedder.texts_embedded == embedded  # nothing embedded again
    upgraded = store.load(settings.index_dir)
    assert upgraded.terms is not None and upgraded.bm25 is not None
    assert_same_terms(upgraded.terms, whole_terms(upgraded))
    assert build(settings, odd.embedder).version is None  # and then it is up to date


def test_bm25_matrix_equals_the_one_bm25s_builds_from_lists() -> None:
    import bm25s
    from bm25s.tokenization import Tokenized

    from qa.lexical import Rows, bm25

    rng = np.random.default_rng(7)
    lists = [np.sort(rng.integers(0, 400, size=rng.integers(1, 120))).astype(np.int32) for _ in range(500)]
    lists[3] = np.array([5], dtype=np.int32)  # one token
    lists[4] = np.array([9, 9, 9, 9], dtype=np.int32)  # one term, repeated
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in lists], out=offsets[1:])
    numbers = {f"t{i}": i for i in range(450)}  # some terms in no document
    reference = bm25s.BM25(k1=1.2, b=0.75)
    reference.index(Tokenized(ids=[x.tolist() for x in lists], vocab=numbers), create_empty_token=False,
                    show_progress=False)
    made = bm25(Rows(offsets, np.concatenate(lists)), numbers, 1.2, 0.75)
    assert type(made) is bm25s.BM25 and made.scores["num_docs"] == 500
    for key in ("data", "indices", "indptr"):
        assert np.array_equal(made.scores[key], reference.scores[key]), key
    query = [numbers["t9"], numbers["t5"], numbers["t200"]]
    assert np.array_equal(made.get_scores_from_ids(query), reference.get_scores_from_ids(query))
