"""Building, incremental updates, atomic swaps and refusals, with the fake embedder."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from qa import store
from qa.assistant import Assistant, Upload
from qa.errors import DocumentError, DocumentNotFound, IndexCorrupt, IndexIncompatible, IndexMissing
from qa.indexing import build
from qa.store import IndexData

from .conftest import make_settings

NEW_ARTICLE = (
    "Lighthouse keepers return to Cape Verde Point\n\n"
    "The lighthouse on Cape Verde Point will be staffed again from May, the maritime office said. "
    "Two keepers will live in the restored cottage beside the tower.\n"
)


def snapshot(data: IndexData) -> tuple:
    """What must be identical between two builds of the same articles."""
    chunks = [(c.doc_id, c.position, c.start, c.end, c.text, c.sentences) for c in data.chunks]
    return (chunks, list(data.sentences), np.asarray(data.chunk_sentences).reshape(-1, 2).tolist(), sorted(data.documents))


def test_build_writes_a_complete_manifest(assistant: Assistant) -> None:
    manifest = store.read_manifest(assistant.settings.index_dir)
    assert manifest["model"] == "fake-256" and manifest["dimension"] == 256
    assert manifest["format_version"] == store.FORMAT_VERSION
    hashes = store.content_hashes(assistant.settings.index_dir)
    assert set(hashes) == {p.stem for p in assistant.settings.docs_dir.glob("*.txt")}
    assert all(len(value) == 64 for value in hashes.values())
    assert manifest["checksum"] == store.CHECKSUM
    assert manifest["chunking"] == {"chunk_chars": 700, "chunk_min_chars": 250, "overlap": 1}
    assert set(manifest["files"]) == set(store.FILES) and manifest["built_at"]


def test_incremental_equals_full_rebuild(assistant: Assistant, tmp_path: Path) -> None:
    settings = assistant.settings
    docs = settings.docs_dir
    (docs / "new_article.txt").write_text(NEW_ARTICLE)
    changed = docs / "003_a706da511b167a58.txt"
    changed.write_text(changed.read_text() + "\nA sentence added in an edit about lighthouses.\n")
    (docs / "000_53675505a120e109.txt").unlink()

    embedder = assistant.embedder
    before = embedder.texts_embedded
    report = build(settings, embedder)
    assert sorted(report.embedded_documents) == ["003_a706da511b167a58", "new_article"]
    assert report.removed_documents == ["000_53675505a120e109"]
    incremental = store.load(settings.index_dir)
    embedded = embedder.texts_embedded - before

    full_settings = dataclasses.replace(settings, index_dir=tmp_path / "full")
    build(full_settings, embedder, full=True)
    full = store.load(full_settings.index_dir)
    assert snapshot(incremental) == snapshot(full)
    assert np.array_equal(incremental.vectors, full.vectors)
    assert np.array_equal(incremental.sentence_vectors, full.sentence_vectors)
    # Only the two touched articles were embedded, not the whole corpus.
    assert embedded < (embedder.texts_embedded - before - embedded) / 2

    question = "Who will live in the cottage beside the lighthouse tower?"
    ask_incremental = Assistant(settings, embedder)
    ask_incremental.load()
    ask_full = Assistant(full_settings, embedder)
    ask_full.load()
    assert [(p.doc_id, p.start) for p in ask_incremental.ask(question).passages] == \
           [(p.doc_id, p.start) for p in ask_full.ask(question).passages]


def test_unchanged_folder_writes_nothing(assistant: Assistant) -> None:
    version = store.current_version(assistant.settings.index_dir)
    report = assistant.build()
    assert report.version is None and store.current_version(assistant.settings.index_dir) == version


def test_interrupted_build_leaves_previous_index(assistant: Assistant) -> None:
    settings = assistant.settings
    question = "What is the total area of the Hetao cooperation zone?"
    expected = [(p.doc_id, p.start, p.score) for p in assistant.ask(question).passages]
    version = store.current_version(settings.index_dir)
    (settings.docs_dir / "new_article.txt").write_text(NEW_ARTICLE)
    # Crash while the new version's files are being written.
    with mock.patch("qa.store.make_faiss_index", side_effect=KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            build(settings, assistant.embedder)
    assert store.current_version(settings.index_dir) == version
    again = Assistant(settings, assistant.embedder)
    again.load()
    assert [(p.doc_id, p.start, p.score) for p in again.ask(question).passages] == expected
    # The next build cleans up and succeeds.
    assert build(settings, assistant.embedder).embedded_documents == ["new_article"]
    assert not list(settings.index_dir.glob(".tmp-*"))


def test_crash_between_rename_and_pointer_keeps_old_version(assistant: Assistant) -> None:
    settings = assistant.settings
    version = store.current_version(settings.index_dir)
    (settings.docs_dir / "new_article.txt").write_text(NEW_ARTICLE)
    real_replace = os.replace

    def fail_on_pointer(src: object, dst: object) -> None:
        if str(dst).endswith(store.CURRENT):
            raise OSError("power cut")
        real_replace(src, dst)

    with mock.patch("qa.store.os.replace", side_effect=fail_on_pointer):
        with pytest.raises(OSError):
            build(settings, assistant.embedder)
    assert store.current_version(settings.index_dir) == version
    store.load(settings.index_dir)


def test_other_model_is_refused_with_how_to_rebuild(assistant: Assistant) -> None:
    other = dataclasses.replace(assistant.settings, model="fake-128")
    with pytest.raises(IndexIncompatible, match="qa index --full"):
        Assistant(other).load()
    # Indexing with the new model rebuilds from scratch.
    report = Assistant(other).build()
    assert report.full and len(report.embedded_documents) == 5


def test_serving_over_another_models_index_rebuilds_it(assistant: Assistant) -> None:
    old_version = store.current_version(assistant.settings.index_dir)
    other = Assistant(dataclasses.replace(assistant.settings, model="fake-128"))
    messages: list[str] = []
    report = other.ensure_index(log=messages.append)
    assert report is not None and report.full and len(report.embedded_documents) == 5
    assert any("rebuilding" in m for m in messages)
    assert store.current_version(assistant.settings.index_dir) != old_version
    assert other.ask("Hetao zone").passages
    assert other.ensure_index() is None  # now it loads as it is


def test_corrupted_file_is_detected(assistant: Assistant) -> None:
    folder = assistant.settings.index_dir / store.current_version(assistant.settings.index_dir)
    with (folder / "vectors.npy").open("r+b") as handle:
        handle.seek(200)
        handle.write(b"\xff\xff\xff\xff")
    with pytest.raises(IndexCorrupt, match="checksum"):
        Assistant(assistant.settings).load()
    (folder / "dense.faiss").unlink()
    with pytest.raises(IndexCorrupt, match="missing"):
        Assistant(assistant.settings).load()


def test_missing_index_says_how_to_build(settings) -> None:
    with pytest.raises(IndexMissing, match="qa index"):
        Assistant(settings).load()


def test_add_indexes_only_the_new_article(assistant: Assistant) -> None:
    before = assistant.embedder.texts_embedded
    report = assistant.add([Upload("lighthouse.txt", NEW_ARTICLE.encode())])
    assert report.embedded_documents == ["lighthouse"]
    assert (assistant.settings.docs_dir / "lighthouse.txt").read_text() == NEW_ARTICLE
    new_texts = assistant.embedder.texts_embedded - before
    assert 0 < new_texts < 10
    hit = assistant.ask("Who will live in the restored cottage beside the lighthouse?").passages[0]
    assert hit.doc_id == "lighthouse"


def folder_state(*folders: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("../../etc/passwd", b"root:x:0:0", "only .txt, .md, .html, .htm and .pdf"),
        ("notes.docx", b"PK\x03\x04", "only .txt, .md, .html, .htm and .pdf"),
        ("notes.pdf", b"%PDF-1.4", "not a readable PDF"),
        ("empty.txt", b"", "empty"),
        ("binary.txt", b"\x00\x01\x02", "binary"),
        ("latin.txt", b"caf\xe9", "not UTF-8"),
        ("001_75d156586012b08a.txt", b"A different text with the same name.", "already exists"),
        ("copy.txt", None, "same text"),
        ("big.txt", b"x" * 2_000_000, "limit"),
    ],
)
def test_bad_uploads_change_nothing(assistant: Assistant, name: str, data: bytes | None, message: str) -> None:
    settings = assistant.settings
    if data is None:
        data = (settings.docs_dir / "001_75d156586012b08a.txt").read_bytes()
    before = folder_state(settings.docs_dir, settings.index_dir)
    with pytest.raises(DocumentError, match=message):
        assistant.add([Upload(name, data)])
    assert folder_state(settings.docs_dir, settings.index_dir) == before


def test_traversal_names_are_flattened(assistant: Assistant) -> None:
    assistant.add([Upload("a/../../b.txt", NEW_ARTICLE.encode())])
    assert (assistant.settings.docs_dir / "b.txt").is_file()
    assert not (assistant.settings.docs_dir.parent / "b.txt").exists()


def test_failed_rebuild_rolls_back_the_add(assistant: Assistant) -> None:
    settings = assistant.settings
    before = folder_state(settings.docs_dir, settings.index_dir)
    with mock.patch("qa.store.make_faiss_index", side_effect=RuntimeError("disk full")):
        with pytest.raises(RuntimeError):
            assistant.add([Upload("lighthouse.txt", NEW_ARTICLE.encode())])
    assert folder_state(settings.docs_dir, settings.index_dir) == before


def test_remove_and_unknown_id(assistant: Assistant) -> None:
    report = assistant.remove("000_53675505a120e109")
    assert report.removed_documents == ["000_53675505a120e109"]
    assert all(p.doc_id != "000_53675505a120e109" for p in assistant.ask("CU Datahub insurance data", top_k=10).passages)
    with pytest.raises(DocumentNotFound):
        assistant.remove("nope")


def test_bad_file_in_folder_is_skipped_not_fatal(assistant: Assistant) -> None:
    (assistant.settings.docs_dir / "broken.txt").write_bytes(b"\xff\xfe\x00bad")
    report = assistant.build()
    assert "broken.txt" in report.skipped and report.documents == 5


def test_empty_settings_folder_error(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "missing", tmp_path / "index")
    with pytest.raises(DocumentError, match="does not exist"):
        Assistant(settings).build()


def test_copy_of_index_folder_still_loads(assistant: Assistant, tmp_path: Path) -> None:
    """An index folder is self-contained: it can be moved or backed up."""
    moved = tmp_path / "moved"
    shutil.copytree(assistant.settings.index_dir, moved)
    other = Assistant(dataclasses.replace(assistant.settings, index_dir=moved), assistant.embedder)
    other.load()
    assert other.stats()["passages"] == assistant.stats()["passages"]


class _SpanFake:
    """The fake embedder with embed_spans: a span's vector is its own text's, so placement can be checked."""

    def __init__(self) -> None:
        from qa.embedding import FakeEmbedder

        self.inner = FakeEmbedder(256)
        self.name = self.inner.name
        self.dimension = self.inner.dimension
        self.alone: list[str] = []

    def embed(self, texts, *, progress=False):  # type: ignore[no-untyped-def]
        self.alone.extend(texts)
        return self.inner.embed(texts)

    def embed_spans(self, texts, spans, *, progress=False):  # type: ignore[no-untyped-def]
        return (self.inner.embed(texts),
                [self.inner.embed([text[s:e] for s, e in row]) for text, row in zip(texts, spans)])


def test_sentence_vectors_come_from_the_passages_pass(settings) -> None:  # type: ignore[no-untyped-def]
    spans = _SpanFake()
    build(settings, spans)
    data = store.load(settings.index_dir)
    assert spans.alone == []  # no sentence was embedded as a text of its own
    texts = [data.documents[doc_id].text[start:end] for doc_id, start, end in data.sentences]
    assert np.allclose(data.sentence_vectors, spans.inner.embed(texts))
    # Every passage's sentences are rows of the index, in order, so the pooled vectors landed in place.
    for chunk, (first, last) in zip(data.chunks, data.chunk_sentences):
        assert [(s, e) for _, s, e in data.sentences[first:last]] == list(chunk.sentences)


def test_add_swaps_in_the_written_version_without_reading_the_index_back(assistant: Assistant) -> None:
    real_load = store.load
    with mock.patch("qa.store.load", side_effect=real_load) as loads:
        report = assistant.add([Upload("lighthouse.txt", NEW_ARTICLE.encode())])
    assert loads.call_count == 0 and report.version == store.current_version(assistant.settings.index_dir)
    live = assistant.snapshot().data
    fresh = Assistant(assistant.settings)
    fresh.load()
    on_disk = fresh.snapshot().data
    assert snapshot(live) == snapshot(on_disk) and live.version == on_disk.version
    assert np.array_equal(live.vectors, on_disk.vectors) and np.array_equal(live.sentence_vectors, on_disk.sentence_vectors)
    assert live.manifest == on_disk.manifest
    question = "When will the lighthouse on Cape Verde Point be staffed?"
    assert assistant.ask(question).passages == fresh.ask(question).passages


def test_incremental_version_is_byte_for_byte_a_full_builds(assistant: Assistant, tmp_path: Path) -> None:
    """Articles added before the first and between two kept ones, one edited and one removed: the same files."""
    settings = assistant.settings
    docs = settings.docs_dir
    (docs / "0000_first.txt").write_text(NEW_ARTICLE)  # sorts before every seed article
    (docs / "001a_between.txt").write_text("Ferry timetable\n\nThe harbour ferry runs every hour from June.\n")
    edited = docs / "003_a706da511b167a58.txt"
    edited.write_text(edited.read_text() + "\nA sentence added in an edit about lighthouses.\n")
    (docs / "004_c96e7aec04f74565.txt").unlink()
    report = assistant.build()
    assert sorted(report.embedded_documents) == ["0000_first", "001a_between", "003_a706da511b167a58"]
    full_settings = dataclasses.replace(settings, index_dir=tmp_path / "full")
    full = build(full_settings, assistant.embedder, full=True)
    ours, theirs = settings.index_dir / str(report.version), full_settings.index_dir / str(full.version)
    manifests = [json.loads((folder / store.MANIFEST).read_text()) for folder in (ours, theirs)]
    assert set(manifests[0]["files"]) == set(store.FILES)
    for filename in manifests[0]["files"]:
        assert (ours / filename).read_bytes() == (theirs / filename).read_bytes(), filename
    for manifest in manifests:
        del manifest["built_at"], manifest["version"]
    assert manifests[0] == manifests[1]
    # And both are right: each passage's sentence rows are sentences of its article, inside it.
    data = store.load(settings.index_dir)
    for chunk, (first, last) in zip(data.chunks, data.chunk_sentences):
        assert first < last
        assert all(doc_id == chunk.doc_id and chunk.start <= start < end <= chunk.end
                   for doc_id, start, end in data.sentences[first:last])


@pytest.mark.parametrize("array", [np.arange(12, dtype=np.float32).reshape(3, 4), np.zeros((0, 384), np.float32),
                                   np.arange(5, dtype=np.int64), np.zeros(0, np.int32),
                                   np.arange(12, dtype=np.float32).reshape(3, 4).T])
def test_arrays_are_written_as_np_save_writes_them_with_their_checksum(array: np.ndarray, tmp_path: Path) -> None:
    digest = store._fsync_array(tmp_path / "ours.npy", array)
    np.save(tmp_path / "numpy.npy", np.ascontiguousarray(array), allow_pickle=False)
    assert (tmp_path / "ours.npy").read_bytes() == (tmp_path / "numpy.npy").read_bytes()
    assert digest == store.file_checksum(tmp_path / "ours.npy")
    assert np.array_equal(np.load(tmp_path / "ours.npy"), array)


def test_a_failed_bm25_build_leaves_the_live_version(assistant: Assistant) -> None:
    """The bm25s indexes are built on a worker thread while the other files are written: its failure fails the build."""
    settings = assistant.settings
    version = store.current_version(settings.index_dir)
    (settings.docs_dir / "new_article.txt").write_text(NEW_ARTICLE)
    with mock.patch("qa.lexical.bm25_indexes", side_effect=MemoryError("no room for the scores")):
        with pytest.raises(MemoryError):
            build(settings, assistant.embedder)
    assert store.current_version(settings.index_dir) == version
    assert not list(settings.index_dir.glob(".tmp-*"))
    assert build(settings, assistant.embedder).embedded_documents == ["new_article"]


def test_a_live_version_not_grouped_by_article_is_rebuilt(assistant: Assistant) -> None:
    """Runs of articles are sliced out of the live version's rows, so rows in another order are refused."""
    settings = assistant.settings
    live = assistant.snapshot().data
    shuffled = dataclasses.replace(live, chunks=list(live.chunks[1:]) + list(live.chunks[:1]))
    (settings.docs_dir / "new_article.txt").write_text(NEW_ARTICLE)
    logged: list[str] = []
    report = build(settings, assistant.embedder, current=shuffled, log=logged.append)
    assert any("not grouped by article" in line for line in logged)
    assert len(report.embedded_documents) == len(report.data.documents)  # everything, from scratch


def test_large_versions_serve_vectors_from_the_files_the_build_streamed_out(
        docs_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    questions = ["What is the total area of the Hetao cooperation zone?", "Who bought the data centre?"]
    small = Assistant(make_settings(docs_dir, tmp_path / "small"))
    small.build()
    in_memory = small.snapshot().data
    assert type(in_memory.vectors) is np.ndarray and type(in_memory.sentence_vectors) is np.ndarray
    expected = [[(p.doc_id, p.start, p.score) for p in small.ask(q).passages] for q in questions]

    monkeypatch.setattr(store, "MAP_ABOVE_BYTES", 0)  # every version counts as large
    large = Assistant(make_settings(docs_dir, tmp_path / "large"))
    large.build()
    built = large.snapshot().data
    assert isinstance(built.vectors, store.RowFile) and isinstance(built.sentence_vectors, store.RowFile)
    assert np.array_equal(built.vectors, in_memory.vectors)
    assert np.array_equal(built.sentence_vectors, in_memory.sentence_vectors)
    assert [[(p.doc_id, p.start, p.score) for p in large.ask(q).passages] for q in questions] == expected
    # The streamed files are what write() would have written (load checks every file's SHA-256), and no
    # staging folder is left behind.
    loaded = store.load(tmp_path / "large")
    assert isinstance(loaded.vectors, store.RowFile) and np.array_equal(loaded.vectors, in_memory.vectors)
    import io

    for name, array in (("vectors.npy", in_memory.vectors), ("sentence_vectors.npy", in_memory.sentence_vectors)):
        saved = io.BytesIO()
        np.save(saved, np.asarray(array))
        assert (tmp_path / "large" / loaded.version / name).read_bytes() == saved.getvalue()
    assert not list((tmp_path / "large").glob(".tmp-*"))


def test_a_build_that_spills_its_vectors_writes_the_same_version(docs_dir: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Vectors kept in a store.Spill until the version is written: the same files as kept in memory."""
    from qa import indexing

    kept = Assistant(make_settings(docs_dir, tmp_path / "kept"))
    kept.build()
    spills: list[store.Spill] = []
    made = store.Spill

    def tracked() -> store.Spill:
        spills.append(made())
        return spills[-1]

    monkeypatch.setattr(indexing, "SPILL_ABOVE", 0)
    monkeypatch.setattr(store, "Spill", tracked)
    spilled = Assistant(make_settings(docs_dir, tmp_path / "spilled"))
    spilled.build()
    assert len(spills) == 1 and not Path(spills[0]._folder.name).exists()  # used, then removed
    ours, theirs = (store.load(a.settings.index_dir) for a in (spilled, kept))
    for name in ("vectors.npy", "sentence_vectors.npy", "passages.npy", "sentences.npy", "articles.jsonl"):
        assert (tmp_path / "spilled" / ours.version / name).read_bytes() == \
            (tmp_path / "kept" / theirs.version / name).read_bytes(), name


def test_spilled_rows_read_back_what_was_put() -> None:
    spill = store.Spill()
    try:
        first = np.arange(12, dtype=np.float32).reshape(3, 4)
        second = np.arange(8, dtype=np.float32).reshape(2, 4) + 100
        empty = np.zeros((0, 4), np.float32)
        rows = [spill.put(first), spill.put(empty), spill.put(second), spill.put(np.ones((2, 3), np.float16))]
        assert [len(r) for r in rows] == [3, 0, 2, 2]
        assert np.array_equal(np.asarray(rows[0]), first) and np.array_equal(np.asarray(rows[2]), second)
        assert np.asarray(rows[1]).shape == (0, 4) and np.asarray(rows[3]).dtype == np.float16
        assert np.asarray(rows[2], dtype=np.float64).dtype == np.float64
    finally:
        spill.close()
