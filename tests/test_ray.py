"""`qa index --ray`: a real local Ray cluster on 127.0.0.1 (a head and a worker node, one CPU each).

The driver runs in its own process, as `qa index --ray` does; the version it writes must equal a local
build of the same articles: the same ids, passages, offsets, sentences and terms, vectors within 1e-5.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from qa import store
from qa.assistant import Assistant

from .conftest import SEEDS, make_settings
from .test_reliability import qa_env

pytestmark = pytest.mark.ray

DRIVER = """
import sys
from qa.config import resolve
from qa.ray_build import build
settings = resolve({"docs_dir": sys.argv[1], "index_dir": sys.argv[2], "ray_address": sys.argv[3]})
report = build(settings, shard_articles=int(sys.argv[4]), log=lambda m: print(m, flush=True))
print("embedded", len(report.embedded_documents))
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A head node and a worker node on loopback; yields the address drivers connect to."""
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False}
    ray_cluster = Cluster(initialize_head=True, head_node_args=node, shutdown_at_exit=False)
    try:
        ray_cluster.add_node(**{key: value for key, value in node.items() if key != "include_dashboard"})
        ray_cluster.wait_for_nodes()
        yield ray_cluster.address
    finally:
        ray_cluster.shutdown()


def drive(docs: Path, index: Path, address: str, shard: int, model: str, backend: str = "onnx") -> str:
    env = qa_env(docs, index, QA_MODEL=model, QA_BACKEND=backend)
    done = subprocess.run([sys.executable, "-c", DRIVER, str(docs), str(index), address, str(shard)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def assert_same_version(got_dir: Path, expected_dir: Path, tolerance: float = 1e-5) -> None:
    got, expected = store.load(got_dir), store.load(expected_dir)
    assert list(got.documents) == list(expected.documents)
    assert list(got.documents.values()) == list(expected.documents.values())
    assert [(c.doc_id, c.position, c.start, c.end, c.sentences) for c in got.chunks] == \
           [(c.doc_id, c.position, c.start, c.end, c.sentences) for c in expected.chunks]
    assert list(got.sentences) == list(expected.sentences)
    assert np.array_equal(got.chunk_sentences, expected.chunk_sentences)
    np.testing.assert_allclose(got.vectors, expected.vectors, atol=tolerance, rtol=0)
    np.testing.assert_allclose(got.sentence_vectors, expected.sentence_vectors, atol=tolerance, rtol=0)
    assert got.terms is not None and expected.terms is not None
    assert list(got.terms.vocabulary) == list(expected.terms.vocabulary)
    for kind in ("passages", "articles", "sentences"):
        assert np.array_equal(getattr(got.terms, kind).ids, getattr(expected.terms, kind).ids)
        assert np.array_equal(getattr(got.terms, kind).offsets, getattr(expected.terms, kind).offsets)
    assert store.content_hashes(got_dir) == store.content_hashes(expected_dir)


def test_a_ray_build_equals_a_local_build_and_updates_by_content_hash(cluster: str, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(SEEDS, docs)
    # One article per task: the five seeds spread over both nodes' actors.
    out = drive(docs, tmp_path / "ray-index", cluster, 1, "fake-256")
    assert "on 2 Ray actor(s)" in out and "embedded 5" in out
    local = Assistant(make_settings(docs, tmp_path / "local-index"))
    local.build()
    assert_same_version(tmp_path / "ray-index", tmp_path / "local-index")

    # An edited and a new article: only those two go to the cluster, the rest is reused by content hash.
    first = sorted(docs.glob("*.txt"))[0]
    first.write_text(first.read_text(encoding="utf-8") + "\nThe festival closes on Sunday.\n", encoding="utf-8")
    (docs / "zz_ferry.txt").write_text("Night ferry resumes\n\nThe overnight ferry sails again on Friday.\n",
                                       encoding="utf-8")
    out = drive(docs, tmp_path / "ray-index", cluster, 1, "fake-256")
    assert "embedding 2 article(s)" in out and "embedded 2" in out
    local.build()
    assert_same_version(tmp_path / "ray-index", tmp_path / "local-index")


@pytest.mark.model
def test_a_ray_build_with_the_real_model_equals_a_local_build(cluster: str, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(SEEDS, docs)
    # The shipped int8 backend: one text per forward pass, so an article's vectors do not depend on which
    # articles an actor embedded beside it.
    out = drive(docs, tmp_path / "ray-index", cluster, 1, "packaged:all-MiniLM-L6-v2", "onnx")
    assert "on 2 Ray actor(s)" in out and "embedded 5" in out
    settings = make_settings(docs, tmp_path / "local-index", model="packaged:all-MiniLM-L6-v2", backend="onnx")
    Assistant(settings).build()
    assert_same_version(tmp_path / "ray-index", tmp_path / "local-index")
    manifest = json.loads((tmp_path / "ray-index" / store.current_version(tmp_path / "ray-index") / store.MANIFEST)
                          .read_text())
    assert manifest["model"].startswith("packaged:all-MiniLM-L6-v2")
