"""The HNSW graph: grown by adds, rebuilt by removals and edits, searched by passage row, with the fake embedder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from qa import store
from qa.assistant import Assistant, Upload
from qa.config import Settings
from qa.embedding import FakeEmbedder
from qa.errors import IndexCorrupt
from qa.indexing import build
from qa.store import IndexData

# Sorts between 001_... and 002_..., so its passages land in the middle rows and every later row shifts.
MIDDLE = "001a_lighthouse"
LIGHTHOUSE = (
    "Lighthouse keepers return to Cape Verde Point\n\n"
    "The lighthouse on Cape Verde Point will be staffed again from May, the maritime office said. "
    "Two keepers will live in the restored cottage beside the tower, and a third will join them in "
    "the stormy months, when the foghorn sounds through most nights and supply boats cannot land.\n\n"
    "The lamp itself was electrified in 1962 and automated in 1991. Volunteers have since repainted "
    "the gallery railings, rebuilt the oil store as a small museum of lenses and logbooks, and kept "
    "a record of every ship that passed the headland, which the keepers will now carry on by hand.\n"
)

FERRY = (
    "Night ferry to the islands resumes\n\n"
    "The overnight ferry between the harbour and the northern islands sails again on Friday after "
    "its engines were overhauled during the winter, the shipping company announced yesterday.\n"
)


@pytest.fixture
def approximate(monkeypatch: pytest.MonkeyPatch) -> None:
    """An HNSW graph for the seed articles, which are far below the real threshold."""
    monkeypatch.setattr(store, "APPROXIMATE_ABOVE", 5)


def built(settings: Settings, embedder: FakeEmbedder, current: IndexData | None = None) -> IndexData:
    """Build, expecting a version to be written; the version as the build left it in memory."""
    report = build(settings, embedder, current=current)
    assert report.data is not None
    return report.data


def top_rows(data: IndexData, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Every passage's own vector searched through the wrapper: scores and rows, one line per passage."""
    assert data.faiss_index is not None
    return data.faiss_index.search(np.ascontiguousarray(data.vectors, dtype=np.float32), k)


def graph_vectors(data: IndexData) -> np.ndarray:
    """The vectors the graph holds, in label order."""
    assert data.faiss_index is not None
    return data.faiss_index.index.reconstruct_n(0, data.faiss_index.ntotal)


def test_adding_an_article_grows_the_graph(settings: Settings, approximate: None) -> None:
    embedder = FakeEmbedder(256)
    old = built(settings, embedder)
    assert old.manifest["faiss"] == "hnsw" and store.LABELS in old.manifest["files"]
    (settings.docs_dir / f"{MIDDLE}.txt").write_text(LIGHTHOUSE)
    with mock.patch("qa.store.make_faiss_index", wraps=store.make_faiss_index) as rebuilt:
        new = built(settings, embedder, current=old)
    assert rebuilt.call_count == 0
    assert new.manifest["faiss"] == "hnsw" and new.faiss_index is not None and old.faiss_index is not None
    added = [row for row, chunk in enumerate(new.chunks) if chunk.doc_id == MIDDLE]
    assert len(added) >= 2 and added[-1] < len(new.chunks) - 1  # several passages, in the middle rows

    # The old graph's labels keep their passages, now at shifted rows; the new ones come after them.
    n = old.faiss_index.ntotal
    old_rows, new_rows = old.faiss_index.rows, new.faiss_index.rows
    assert old_rows is not None and new_rows is not None
    key = [(c.doc_id, c.position) for c in new.chunks]
    assert [key[r] for r in new_rows[:n]] == [(old.chunks[r].doc_id, old.chunks[r].position) for r in old_rows]
    assert not np.array_equal(new_rows[:n], old_rows)
    assert sorted(new_rows[n:].tolist()) == added
    assert np.array_equal(graph_vectors(new)[:n], graph_vectors(old))
    assert np.array_equal(graph_vectors(new), new.vectors[new_rows])

    # Searching through the wrapper answers passage rows: each passage is its own nearest.
    _, rows = top_rows(new)
    assert np.array_equal(rows[:, 0], np.arange(len(new.chunks)))
    for row in added:
        assert new.faiss_index.search(new.vectors[row:row + 1], 3)[1][0][0] == row


def test_the_written_version_loads_as_it_was_built(settings: Settings, approximate: None) -> None:
    embedder = FakeEmbedder(256)
    old = built(settings, embedder)
    (settings.docs_dir / f"{MIDDLE}.txt").write_text(LIGHTHOUSE)
    grown = built(settings, embedder, current=old)
    # A second add grows a graph whose labels are no longer rows.
    (settings.docs_dir / "000a_ferry.txt").write_text(FERRY)
    with mock.patch("qa.store.make_faiss_index", wraps=store.make_faiss_index) as rebuilt:
        new = built(settings, embedder, current=grown)
    assert rebuilt.call_count == 0
    _, rows = top_rows(new)
    assert np.array_equal(rows[:, 0], np.arange(len(new.chunks)))
    loaded = store.load(settings.index_dir)
    assert loaded.version == new.version and loaded.manifest == new.manifest
    assert loaded.faiss_index is not None and new.faiss_index is not None
    assert np.array_equal(loaded.faiss_index.rows, new.faiss_index.rows)
    for got, expected in zip(top_rows(loaded, 10), top_rows(new, 10)):
        assert np.array_equal(got, expected)
    # The live version's graph was copied, not grown in place: it still answers as before.
    assert old.faiss_index is not None and old.faiss_index.ntotal == len(old.chunks)
    _, rows = top_rows(old)
    assert np.array_equal(rows[:, 0], np.arange(len(old.chunks)))


@pytest.mark.parametrize("change", ["remove", "edit"])
def test_removing_or_changing_an_article_rebuilds_the_graph(settings: Settings, approximate: None, change: str) -> None:
    embedder = FakeEmbedder(256)
    (settings.docs_dir / f"{MIDDLE}.txt").write_text(LIGHTHOUSE)
    old = built(settings, embedder)
    path = settings.docs_dir / "000_53675505a120e109.txt"
    if change == "remove":
        path.unlink()
    else:
        path.write_text(path.read_text() + "\nA sentence added in an edit about lighthouses.\n")
    (settings.docs_dir / "zz_new.txt").write_text(FERRY)
    with mock.patch("qa.store.make_faiss_index", wraps=store.make_faiss_index) as rebuilt:
        new = built(settings, embedder, current=old)
    assert rebuilt.call_count == 1
    assert new.manifest["faiss"] == "hnsw" and new.faiss_index is not None
    assert np.array_equal(new.faiss_index.rows, np.arange(len(new.chunks)))
    _, rows = top_rows(new)
    assert np.array_equal(rows[:, 0], np.arange(len(new.chunks)))


def test_crossing_the_threshold_builds_the_graph_and_the_manifest_says_so(settings: Settings,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    embedder = FakeEmbedder(256)
    old = built(settings, embedder)
    monkeypatch.setattr(store, "APPROXIMATE_ABOVE", len(old.chunks))
    assert old.manifest["faiss"] == "flat-ip" and store.LABELS not in old.manifest["files"]
    (settings.docs_dir / f"{MIDDLE}.txt").write_text(LIGHTHOUSE)
    new = built(settings, embedder, current=old)
    assert new.manifest["faiss"] == "hnsw" and store.LABELS in new.manifest["files"]
    _, rows = top_rows(store.load(settings.index_dir))
    assert np.array_equal(rows[:, 0], np.arange(len(new.chunks)))
    (settings.docs_dir / f"{MIDDLE}.txt").unlink()
    assert built(settings, embedder, current=new).manifest["faiss"] == "flat-ip"


def drop_labels(index_dir: Path) -> None:
    """Make the live version look like an HNSW version from before label files: labelled by row."""
    folder = index_dir / store.current_version(index_dir)
    manifest = json.loads((folder / store.MANIFEST).read_text())
    del manifest["files"][store.LABELS]
    (folder / store.MANIFEST).write_text(json.dumps(manifest))
    (folder / store.LABELS).unlink()


def test_an_hnsw_version_without_labels_loads_and_grows(settings: Settings, approximate: None) -> None:
    embedder = FakeEmbedder(256)
    built(settings, embedder)
    drop_labels(settings.index_dir)
    old = store.load(settings.index_dir)
    assert old.faiss_index is not None and old.faiss_index.rows is None and old.faiss_index.kind == "hnsw"
    (settings.docs_dir / f"{MIDDLE}.txt").write_text(LIGHTHOUSE)
    with mock.patch("qa.store.make_faiss_index", wraps=store.make_faiss_index) as rebuilt:
        new = built(settings, embedder, current=old)
    assert rebuilt.call_count == 0
    _, rows = top_rows(store.load(settings.index_dir))
    assert np.array_equal(rows[:, 0], np.arange(len(new.chunks)))


def test_damaged_labels_are_refused(settings: Settings, approximate: None) -> None:
    built(settings, FakeEmbedder(256))
    folder = settings.index_dir / store.current_version(settings.index_dir)
    rows = np.load(folder / store.LABELS)
    rows[1] = rows[0]  # two labels for one passage, none for another
    with (folder / store.LABELS).open("wb") as handle:
        np.save(handle, rows)
    with pytest.raises(IndexCorrupt, match="checksum"):
        store.load(settings.index_dir)
    # Even with a matching checksum, labels that do not cover every passage once are refused.
    manifest = json.loads((folder / store.MANIFEST).read_text())
    manifest["files"][store.LABELS] = store.file_checksum(folder / store.LABELS)
    (folder / store.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(IndexCorrupt, match="qa index --full"):
        store.load(settings.index_dir)


def test_an_add_through_the_assistant_grows_the_graph_it_serves(settings: Settings, approximate: None) -> None:
    helper = Assistant(settings, FakeEmbedder(256))
    helper.build()
    before = helper.snapshot().data
    with mock.patch("qa.store.make_faiss_index", wraps=store.make_faiss_index) as rebuilt:
        helper.add([Upload(f"{MIDDLE}.txt", LIGHTHOUSE.encode())])
    assert rebuilt.call_count == 0
    assert before.faiss_index is not None and before.faiss_index.ntotal == len(before.chunks)
    hit = helper.ask("Who will live in the restored cottage beside the lighthouse tower?").passages[0]
    assert hit.doc_id == MIDDLE


def test_a_graph_holding_other_vectors_is_not_reused(settings: Settings, approximate: None) -> None:
    old = built(settings, FakeEmbedder(256))
    assert store.dense_index(old, old).rows is not None
    vectors = old.vectors.copy()
    vectors[3] = vectors[4]  # same articles, but not the vectors the graph was built from
    with mock.patch("qa.store.make_faiss_index", wraps=store.make_faiss_index) as rebuilt:
        dense = store.dense_index(dataclasses.replace(old, vectors=vectors), old)
    assert rebuilt.call_count == 1 and dense.ntotal == len(vectors)
