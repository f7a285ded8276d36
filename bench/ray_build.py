"""A Ray build against the single-process build of the same articles: time per core, and the same index.

    python bench/ray_build.py [--data ../shared] [--limit N] [--work DIR] [--skip-local]

Articles: SQuAD v1.1 train and dev paragraphs and SciFact abstracts (about 26,000, `--limit` of each
set for a quick look), written as article files (title line, blank line, text). Then, each in its own
process, with the packaged model (ONNX int8):
1. `qa index --full`: one process, ONNX Runtime on every core;
2. `qa index --full --ray ADDRESS` on a local Ray cluster started here on 127.0.0.1: a head and a worker
   node of one CPU each, so two actors, one per core.
Printed: wall seconds, passages per second and per core for each, and the comparison of the two versions
(ids, passages, offsets and sentences equal; the largest vector difference). Needs the `ray` extra.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SETS = {"squadtrain": "train/squad-v1.1-train", "squad": "eval/squad-v1.1-dev", "scifact": "eval/scifact"}
DRIVER = """
import json, sys, time
from qa.config import resolve
from qa.ray_build import build
settings = resolve({"docs_dir": sys.argv[1], "index_dir": sys.argv[2], "ray_address": sys.argv[3]})
started = time.perf_counter()
report = build(settings, full=True, log=lambda m: print(m, file=sys.stderr, flush=True))
print(json.dumps({"seconds": time.perf_counter() - started, "passages": report.passages}))
"""
LOCAL = """
import json, sys, time
from qa.assistant import Assistant
from qa.config import resolve
settings = resolve({"docs_dir": sys.argv[1], "index_dir": sys.argv[2]})
started = time.perf_counter()
report = Assistant(settings).build(full=True)
print(json.dumps({"seconds": time.perf_counter() - started, "passages": report.passages}))
"""


def write_articles(data: Path, docs: Path, limit: int | None) -> int:
    docs.mkdir(parents=True, exist_ok=True)
    count = 0
    for name, folder in SETS.items():
        corpus = data / folder / "corpus.jsonl"
        if not corpus.is_file():
            raise SystemExit(f"error: {corpus} is missing; pass --data (the folder holding train/ and eval/)")
        with open(corpus, encoding="utf-8") as handle:
            for number, line in enumerate(handle):
                if limit is not None and number >= limit:
                    break
                row = json.loads(line)
                title = " ".join(str(row.get("title", "")).split())
                text = f"{title}\n\n{row['text'].strip()}\n" if title else row["text"].strip() + "\n"
                path = docs / (re.sub(r"[^A-Za-z0-9._-]+", "_", f"{name}-{row['id']}") + ".txt")
                if not path.is_file() or path.read_text(encoding="utf-8") != text:
                    path.write_text(text, encoding="utf-8")
                count += 1
    return count


def run(script: str, *args: str, env: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"build failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(a: Path, b: Path) -> dict:
    from qa import store

    got, expected = store.load(a), store.load(b)
    same_docs = list(got.documents) == list(expected.documents)
    same_chunks = [(c.doc_id, c.position, c.start, c.end, c.sentences) for c in got.chunks] == \
        [(c.doc_id, c.position, c.start, c.end, c.sentences) for c in expected.chunks]
    same_sentences = list(got.sentences) == list(expected.sentences)
    passages = float(np.abs(np.asarray(got.vectors, np.float32) - np.asarray(expected.vectors, np.float32)).max())
    sentences = float(np.abs(np.asarray(got.sentence_vectors, np.float32)
                             - np.asarray(expected.sentence_vectors, np.float32)).max())
    return {"articles": same_docs, "passages_and_offsets": same_chunks, "sentences": same_sentences,
            "max_passage_vector_diff": passages, "max_sentence_vector_diff": sentences}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--limit", type=int, default=None, help="at most N articles of each set")
    parser.add_argument("--work", type=Path, default=REPO / "bench" / ".cache" / "ray-build")
    args = parser.parse_args()
    try:
        from ray.cluster_utils import Cluster
    except ImportError:
        raise SystemExit("error: this benchmark needs Ray: pip install 'qa[ray]'") from None
    docs = args.work / "docs"
    articles = write_articles(args.data, docs, args.limit)
    print(f"{articles:,} articles in {docs}", flush=True)
    env = {**os.environ, "QA_READER": "off", "QA_WATCH": "0"}
    for name in ("local-index", "ray-index"):
        shutil.rmtree(args.work / name, ignore_errors=True)
    cores = len(os.sched_getaffinity(0))
    local = run(LOCAL, str(docs), str(args.work / "local-index"), env=env)
    print(f"single process: {local['passages']:,} passages in {local['seconds']:.0f} s", flush=True)
    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=node, shutdown_at_exit=False)
    try:
        cluster.add_node(**{k: v for k, v in node.items() if k != "include_dashboard"})
        cluster.wait_for_nodes()
        started = time.perf_counter()
        ray = run(DRIVER, str(docs), str(args.work / "ray-index"), cluster.address, env=env)
        ray["wall"] = time.perf_counter() - started
    finally:
        cluster.shutdown()
    print(f"ray, 2 actors of 1 CPU: {ray['passages']:,} passages in {ray['seconds']:.0f} s", flush=True)
    same = compare(args.work / "ray-index", args.work / "local-index")
    local_rate = local["passages"] / local["seconds"]
    ray_rate = ray["passages"] / ray["seconds"]
    print("\n| build | articles | passages | seconds | passages/s | per core |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| single process, {cores} cores | {articles:,} | {local['passages']:,} | {local['seconds']:.0f} | "
          f"{local_rate:.1f} | {local_rate / cores:.1f} |")
    print(f"| Ray, head + worker node, 1 CPU each | {articles:,} | {ray['passages']:,} | {ray['seconds']:.0f} | "
          f"{ray_rate:.1f} | {ray_rate / 2:.1f} |")
    print(f"\nper-core ratio Ray / single process: {(ray_rate / 2) / (local_rate / cores):.3f}")
    print("same index:", json.dumps(same))
    return 0


if __name__ == "__main__":
    sys.exit(main())
