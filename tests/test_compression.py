"""Compressed versions (IVF-SQ8, float16 vectors, memory-mapped), with the threshold lowered to the seed articles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qa import compression, store
from qa.assistant import Assistant, Upload
from qa.config import Settings

from .test_dense_index import FERRY, LIGHTHOUSE, MIDDLE

QUESTIONS = ("What is the total area of the Hetao cooperation zone?", "Who is the mayor of Shenzhen?",
             "How many patents has the HKUST research institute applied for?")


@pytest.fixture
def compressed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every version with more than 10 passages is stored compressed (the seeds have about 50)."""
    monkeypatch.setattr(compression, "COMPRESS_ABOVE", 10)


def manifest(settings: Settings) -> dict[str, object]:
    return json.loads((settings.index_dir / store.current_version(settings.index_dir) / store.MANIFEST).read_text())


def test_a_compressed_version_is_ivf_sq8_with_float16_vectors_read_from_its_files(
        compressed: None, settings: Settings) -> None:
    helper = Assistant(settings)
    helper.build()
    assert manifest(settings)["faiss"] == compression.KIND
    helper.load()  # from disk, as a server opens it
    data = helper.snapshot().data
    assert isinstance(data.vectors, store.RowFile) and data.vectors.dtype == np.float16
    assert isinstance(data.sentence_vectors, store.RowFile) and data.sentence_vectors.dtype == np.float16
    assert data.faiss_index is not None and data.faiss_index.kind == compression.KIND
    # Each passage's own vector finds that passage first: the codes propose, stored vectors score.
    scores, rows = data.faiss_index.search(np.asarray(data.vectors, dtype=np.float32), 1)
    assert np.array_equal(rows[:, 0], np.arange(len(data.chunks)))


def test_compressed_answers_match_uncompressed_ones(compressed: None, settings: Settings, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    small = Assistant(settings)
    small.build()
    monkeypatch.setattr(compression, "COMPRESS_ABOVE", 10**9)
    exact = Assistant(settings.__class__(**{**settings.__dict__, "index_dir": tmp_path / "exact"}))
    exact.build()
    assert manifest(exact.settings)["faiss"] == "flat-ip"
    for question in QUESTIONS:
        got, expected = small.ask(question), exact.ask(question)
        assert [p.doc_id for p in got.passages] == [p.doc_id for p in expected.passages]
        assert [p.start for p in got.passages] == [p.start for p in expected.passages]
        for a, b in zip(got.passages, expected.passages):
            assert a.dense == pytest.approx(b.dense, abs=2e-3)  # float16 vectors


def test_adding_grows_the_compressed_index_and_equals_a_full_build(compressed: None, settings: Settings,
                                                                   tmp_path: Path) -> None:
    helper = Assistant(settings)
    helper.build()
    helper.load()  # the base is memory-mapped, as in a server
    helper.add([Upload(MIDDLE + ".txt", LIGHTHOUSE.encode()), Upload("zz_ferry.txt", FERRY.encode())])
    assert store.LABELS in manifest(settings)["files"]  # grown: labels in arrival order
    grown = store.load(settings.index_dir)
    full = Assistant(settings.__class__(**{**settings.__dict__, "index_dir": tmp_path / "full"}))
    full.build()
    rebuilt = store.load(full.settings.index_dir)
    assert [(c.doc_id, c.start, c.end) for c in grown.chunks] == [(c.doc_id, c.start, c.end) for c in rebuilt.chunks]
    assert np.array_equal(grown.vectors, rebuilt.vectors)
    assert np.array_equal(grown.sentence_vectors, rebuilt.sentence_vectors)
    assert grown.faiss_index is not None
    _, rows = grown.faiss_index.search(np.asarray(grown.vectors, dtype=np.float32), 1)
    assert np.array_equal(rows[:, 0], np.arange(len(grown.chunks)))
    assert helper.ask("lighthouse keepers Cape Verde Point").passages[0].doc_id == MIDDLE
