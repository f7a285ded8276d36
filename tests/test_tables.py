"""A loaded version's articles, passages and sentences as tables: the same values as the lists a build makes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from qa import store, tables
from qa.assistant import Assistant
from qa.chunking import Chunk
from qa.documents import Document
from qa.errors import IndexCorrupt
from qa.lexical import document_frequencies
from qa.retrieval import Retriever
from qa.store import IndexData


def _odd_articles() -> IndexData:
    """Articles whose ids and texts need escaping, and one with no passages."""
    ids = sorted(["café", 'quote"d', "back\\slash", "北京", "plain"])
    docs = {doc_id: Document(doc_id, f"Title {doc_id}", "Daily" if i % 2 else None, "2024-05-0%d" % (i + 1), None,
                             f"Über {doc_id}. Two “quoted” words.\nThird line.", "h" * 64)
            for i, doc_id in enumerate(ids)}
    chunks, sentences, ranges = [], [], []
    for doc_id in ids[:-1]:
        text = docs[doc_id].text
        spans = ((0, text.index(".") + 1), (text.index(".") + 2, len(text)))
        ranges.append((len(sentences), len(sentences) + 2))
        sentences.extend((doc_id, s, e) for s, e in spans)
        chunks.append(Chunk(doc_id, 0, 0, len(text), text, spans))
    return IndexData(docs, chunks, np.zeros((len(chunks), 2), np.float32), sentences,
                     np.zeros((len(sentences), 2), np.float32), ranges)


def test_tables_give_what_the_lists_held() -> None:
    data = _odd_articles()
    documents = tables.DocumentTable.of(data.documents.values(), store.passage_counts(data))
    assert dict(documents) == data.documents and list(documents) == list(data.documents)
    passage_rows, sentence_rows = tables.rows_of(data.documents, data.chunks, data.sentences, data.chunk_sentences)
    sentences = tables.SentenceTable(documents.ids, sentence_rows)
    passages = tables.PassageTable(documents, passage_rows, sentences)
    assert list(passages) == data.chunks and passages == data.chunks
    assert list(sentences) == data.sentences and sentences[1:3] == data.sentences[1:3]
    assert passages[-1] == data.chunks[-1] and list(passages[1:3]) == data.chunks[1:3]
    assert passages.sentence_ranges.tolist() == [list(r) for r in data.chunk_sentences]
    assert passages.owners() == [c.doc_id for c in data.chunks]
    assert sentences.owners() == [d for d, _, _ in data.sentences]
    with pytest.raises(IndexError):
        passages[len(data.chunks)]
    with pytest.raises(KeyError):
        documents["missing"]
    assert store.passage_counts(dataclasses.replace(data, documents=documents, chunks=passages)) == \
        store.passage_counts(data) == {**{d: 1 for d in list(data.documents)[:-1]}, "北京": 0}


def test_filters_read_the_columns_not_the_records() -> None:
    data = _odd_articles()
    documents = tables.DocumentTable.of(data.documents.values())
    assert list(tables.headings(documents)) == [(d.doc_id, d.source, d.published) for d in data.documents.values()]
    documents._records = b""  # a record read now would fail
    assert len(list(tables.headings(documents))) == len(data.documents)


def test_a_record_that_is_not_its_article_is_refused() -> None:
    data = _odd_articles()
    good = tables.DocumentTable.of(data.documents.values())
    swapped = tables.DocumentTable(list(reversed(good.ids)), good.sources, good.published, good._records, good._offsets,
                                   good.hashes)
    with pytest.raises(ValueError, match="is not the article"):
        swapped[good.ids[0]]


def test_a_loaded_version_holds_tables_equal_to_what_was_built(assistant: Assistant) -> None:
    built = assistant.snapshot().data
    loaded = store.load(assistant.settings.index_dir)
    assert isinstance(loaded.chunks, tables.PassageTable) and isinstance(built.chunks, tables.PassageTable)
    assert list(loaded.chunks) == list(built.chunks) and list(loaded.sentences) == list(built.sentences)
    assert dict(loaded.documents) == dict(built.documents)
    # And they are what chunking the articles gives, passage for passage and sentence for sentence.
    from qa.indexing import split_document

    expected_chunks, expected_sentences = [], []
    for doc in loaded.documents.values():
        chunks, spans, _ = split_document(doc, assistant.settings)
        expected_chunks += chunks
        expected_sentences += [(doc.doc_id, start, end) for start, end in spans]
    assert list(loaded.chunks) == expected_chunks and list(loaded.sentences) == expected_sentences
    assert "documents" not in loaded.manifest  # the tables hold the per-article entries
    assert store.content_hashes(assistant.settings.index_dir) == {d: doc.content_hash
                                                                 for d, doc in loaded.documents.items()}
    assert [loaded.documents.content_hash(d) for d in loaded.documents] == [doc.content_hash
                                                                           for doc in loaded.documents.values()]


@pytest.mark.parametrize("mapped", [False, True])
def test_mapped_and_read_tables_are_equal(assistant: Assistant, mapped: bool) -> None:
    folder = assistant.settings.index_dir / str(store.current_version(assistant.settings.index_dir))
    docs, passages, sentences = store.open_tables(folder, mapped)
    data = store.load(assistant.settings.index_dir)
    assert list(passages) == list(data.chunks) and list(sentences) == list(data.sentences)
    assert dict(docs) == dict(data.documents)
    assert isinstance(passages.rows, np.memmap) == mapped


def test_document_frequencies_read_from_the_bm25_index_equal_the_counted_ones(assistant: Assistant) -> None:
    data = store.load(assistant.settings.index_dir)
    assert data.terms is not None and data.bm25 is not None
    counted = document_frequencies(data.terms.passages, len(data.terms.vocabulary))
    read = document_frequencies(data.terms.passages, len(data.terms.vocabulary), data.bm25.passages)
    assert read.tolist() == counted.tolist() and counted.sum() > 0


def _as_written_before_tables(folder: Path) -> None:
    """Turn a version folder into the layout versions had before the tables: documents.json and passages.json."""
    docs, passages, sentences = store.open_tables(folder, False)
    counts = np.bincount(passages.doc_rows, minlength=len(docs)).tolist()
    records = [tables.record(doc, n) for doc, n in zip(docs.values(), counts)]
    stored = {"passages": [{"doc_id": c.doc_id, "position": c.position, "start": c.start, "end": c.end,
                            "sentences": list(r)} for c, r in zip(passages, passages.sentence_ranges.tolist())],
              "sentences": [list(s) for s in sentences]}
    manifest = json.loads((folder / store.MANIFEST).read_text())
    for name in store.TABLE_FILES:
        (folder / name).unlink()
        del manifest["files"][name]
    for name, value in (("documents.json", records), ("passages.json", stored)):
        (folder / name).write_bytes(json.dumps(value, ensure_ascii=False).encode())
        manifest["files"][name] = ""
    # Those versions' manifests listed each article, and SHA-256 checksums.
    manifest["documents"] = {r["doc_id"]: {"content_hash": r["content_hash"], "passages": r["passages"]}
                             for r in records}
    del manifest["checksum"]
    manifest["files"] = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in manifest["files"]}
    (folder / store.MANIFEST).write_text(json.dumps(manifest))


def test_a_version_written_before_the_tables_still_loads_and_answers(assistant: Assistant) -> None:
    index_dir = assistant.settings.index_dir
    expected = store.load(index_dir)
    question = "What is the total area of the Hetao cooperation zone?"
    answer = assistant.ask(question)
    _as_written_before_tables(index_dir / expected.version)
    old = store.load(index_dir)
    assert list(old.chunks) == list(expected.chunks) and list(old.sentences) == list(expected.sentences)
    assert dict(old.documents) == dict(expected.documents)
    assert store.content_hashes(index_dir) == {doc_id: doc.content_hash for doc_id, doc in old.documents.items()}
    fresh = Assistant(assistant.settings, assistant.embedder)
    fresh.load()
    again = fresh.ask(question)
    assert again.answer == answer.answer and [p.text for p in again.passages] == [p.text for p in answer.passages]
    # The next build starts from it, and writes the tables.
    (assistant.settings.docs_dir / "added.txt").write_text("Lighthouse news\n\nThe lighthouse reopened in May.\n")
    report = fresh.build()
    assert report.embedded_documents == ["added"]
    assert all((index_dir / str(report.version) / name).is_file() for name in store.TABLE_FILES)


def test_a_damaged_article_record_is_reported(assistant: Assistant) -> None:
    index_dir = assistant.settings.index_dir
    folder = index_dir / str(store.current_version(index_dir))
    blob = (folder / "articles.jsonl").read_bytes()
    (folder / "articles.jsonl").write_bytes(blob.replace(b'"text": "', b'"text": "X', 1))
    with pytest.raises(IndexCorrupt, match="articles.jsonl"):
        store.load(index_dir)
    (folder / "articles.jsonl").write_bytes(blob[:-5])
    with pytest.raises(IndexCorrupt, match="cannot be read"):
        store.load(index_dir, verify=False)


def test_the_retriever_reads_article_rows_from_the_table(assistant: Assistant) -> None:
    data = store.load(assistant.settings.index_dir)
    listed = dataclasses.replace(data, chunks=list(data.chunks))
    assert Retriever(data)._article_of.tolist() == Retriever(listed)._article_of.tolist()


def test_a_row_file_reads_what_the_array_holds(tmp_path: Path) -> None:
    array = np.arange(7 * 3, dtype=np.float16).reshape(7, 3)
    np.save(tmp_path / "a.npy", array)
    rows = store.RowFile(tmp_path / "a.npy")
    assert rows.shape == (7, 3) and len(rows) == 7 and rows.dtype == np.float16 and rows.size == 21
    for key in (0, -1, 3, slice(None), slice(2, 5), slice(5, 2), slice(None, None, 2), [6, 0, 0, 3, 4, 5],
                np.array([], dtype=np.int64), np.array([True, False] * 3 + [True]), [-1, -7]):
        assert np.array_equal(rows[key], array[key]), key
    assert np.array_equal(np.asarray(rows), array) and rows.astype(np.float32).dtype == np.float32
    window = rows.window(2, 6)
    assert np.array_equal(window[[3, 0]], array[2:6][[3, 0]]) and len(window) == 4
    assert np.array_equal(np.asarray(window.window(1, 3)), array[3:5])
    with pytest.raises(IndexError):
        rows[7]
    with pytest.raises(IndexError):
        rows[[0, 9]]
    ids = np.arange(10, dtype=np.int32)
    np.save(tmp_path / "ids.npy", ids)
    flat = store.RowFile(tmp_path / "ids.npy")
    assert flat[3:6].tolist() == [3, 4, 5] and flat[np.array([9, 1])].tolist() == [9, 1]
    # A file cut short after it was opened: an error that says so, not a crash of the process.
    with (tmp_path / "a.npy").open("r+b") as handle:
        handle.truncate(140)
    with pytest.raises(OSError, match="ends early"):
        rows[6]


def test_a_large_version_is_served_from_files_with_the_same_answers(assistant: Assistant,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    questions = ["What is the total area of the Hetao cooperation zone?", "Who is the mayor of Shenzhen?",
                 "How many researchers has the Shenzhen park attracted?"]
    expected = [assistant.ask(q) for q in questions]
    filtered = assistant.ask(questions[0], filters={"doc_ids": ["001_75d156586012b08a"]})
    monkeypatch.setattr(store, "MAP_ABOVE_BYTES", 0)
    large = Assistant(assistant.settings, assistant.embedder)
    large.load()
    data = large.snapshot().data
    assert isinstance(data.vectors, store.RowFile) and isinstance(data.sentence_vectors, store.RowFile)
    assert data.terms is not None and isinstance(data.terms.sentences.ids, store.RowFile)
    assert data.bm25 is not None and isinstance(data.bm25.passages.scores["data"], store.RowFile)
    for question, before in zip(questions, expected):
        after = large.ask(question)
        assert after.answer == before.answer
        assert [(p.doc_id, p.start, round(p.score, 5)) for p in after.passages] == \
            [(p.doc_id, p.start, round(p.score, 5)) for p in before.passages]
    again = large.ask(questions[0], filters={"doc_ids": ["001_75d156586012b08a"]})
    assert [p.start for p in again.passages] == [p.start for p in filtered.passages]
    # An update builds on the large version's files.
    (assistant.settings.docs_dir / "added.txt").write_text("Lighthouse news\n\nThe lighthouse reopened in May.\n")
    report = large.build()
    assert report.embedded_documents == ["added"]
    assert large.ask(questions[0]).answer.text == expected[0].answer.text  # scores move: one article more


def test_tables_without_the_content_hash_column_read_the_hashes_from_the_records(assistant: Assistant) -> None:
    index_dir = assistant.settings.index_dir
    expected = {d: doc.content_hash for d, doc in store.load(index_dir).documents.items()}
    folder = index_dir / str(store.current_version(index_dir))
    columns = json.loads((folder / "articles.json").read_text())
    del columns["content_hash"]
    (folder / "articles.json").write_text(json.dumps(columns))
    manifest = json.loads((folder / store.MANIFEST).read_text())
    manifest["files"]["articles.json"] = store.file_checksum(folder / "articles.json")
    (folder / store.MANIFEST).write_text(json.dumps(manifest))
    assert store.content_hashes(index_dir) == expected
    assert store.load(index_dir).documents.hashes == list(expected.values())
