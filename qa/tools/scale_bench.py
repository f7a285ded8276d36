"""`qa bench --scale N`: an index of N passages made from real vectors: build time, size, memory, /ask, recall.

The real part: a base index built with the configured model over SQuAD v1.1 dev and SciFact articles
(`--base-articles` of each, from ../shared/eval), and real questions from the same sets. The synthetic
part: the base's articles copied until there are N passages; copy 0 keeps the real vectors, each later
copy mixes every passage (and sentence) vector with a random other passage's, v + w * u with w drawn
from 0.2-0.6, renormalised, so the copies spread between real passages instead of piling up on them.
Texts, offsets and index terms are the base's, repeated, so the lexical side grows the same way.

Reported, for the version written at N passages (compressed above compression.COMPRESS_ABOVE unless
`--compress` says otherwise):
- build time: bm25 indexes and writing the version (store.write), i.e. an index build less embedding;
- the size of the version folder and of its vector files;
- the time to open the version (store.load, checksums included: a worker's switch to it), median of 3;
- recall@10 and recall@50 of its FAISS index against exact inner product over the same stored vectors;
- a real server process (no folder sync) on that version: its start-up to the first answer, /ask p50
  and p95 one question at a time over HTTP, and its resident memory (VmRSS after the run, VmHWM peak).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import compression, indexing, lexical, store
from ..benchmark import REPO, _clients, cores, free_port, git_commit, load_average, load_corpus, percentile
from ..config import Settings, resolve
from ..store import IndexData

SEED = 16


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the real base -------------------------------------------------------------------------------


def base_index(args: argparse.Namespace) -> tuple[IndexData, Settings, list[str]]:
    """The real-model index the synthetic one is made from (built once, kept in the cache), and real questions."""
    from ..assistant import Assistant

    corpus = load_corpus(args.data, args.cache, args.base_articles)
    settings = resolve({"docs_dir": corpus.docs_dir, "index_dir": args.cache / "base-index"})
    started = time.perf_counter()
    report = Assistant(settings).build()
    if report.version is not None:
        log(f"base index: {report.passages} passages from {report.documents} articles in "
            f"{time.perf_counter() - started:.0f}s")
    return store.load(settings.index_dir), settings, corpus.timing


# --- the synthetic index -------------------------------------------------------------------------


def _mixed(vectors: np.ndarray, partners: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each row plus a 0.2-0.6 share of a partner vector, renormalised, as float16."""
    weights = rng.uniform(0.2, 0.6, size=(len(vectors), 1)).astype(np.float32)
    mixed = vectors.astype(np.float32) + weights * partners.astype(np.float32)
    mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
    return mixed.astype(np.float16)


def synthesize(base: IndexData, passages: int, seed: int = SEED) -> IndexData:
    """The base's articles copied (ids prefixed c0000-, c0001-, ...) until at least `passages` passages."""
    assert base.terms is not None
    rng = np.random.default_rng(seed)
    ids = list(base.documents)
    position = {doc_id: i for i, doc_id in enumerate(ids)}
    # Rows are grouped by article in id order: article i has passages [chunk_at[i], chunk_at[i + 1]).
    per_article = np.bincount([position[c.doc_id] for c in base.chunks], minlength=len(ids))
    chunk_at = np.concatenate([[0], np.cumsum(per_article)])
    sentence_at = np.concatenate([[0], np.cumsum(np.bincount([position[d] for d, _, _ in base.sentences],
                                                             minlength=len(ids)))])
    total = len(base.chunks)
    copies = max(1, math.ceil(passages / total))
    # The last copy takes only as many whole articles as reach `passages`.
    wanted = passages - (copies - 1) * total
    last_articles = min(len(ids), int(np.searchsorted(chunk_at[1:], wanted)) + 1)

    documents: dict[str, Any] = {}
    chunks, sentences, chunk_sentences, terms = [], [], [], []
    vector_blocks, sentence_blocks = [], []
    for copy in range(copies):
        articles = len(ids) if copy < copies - 1 else last_articles
        c1, s1 = int(chunk_at[articles]), int(sentence_at[articles])
        renamed = {doc_id: f"c{copy:04d}-{doc_id}" for doc_id in ids[:articles]}  # one string per article
        for doc_id, new_id in renamed.items():
            documents[new_id] = replace(base.documents[doc_id], doc_id=new_id)
        chunks.extend(replace(chunk, doc_id=renamed[chunk.doc_id]) for chunk in base.chunks[:c1])
        offset = len(sentences)
        sentences.extend((renamed[doc_id], start, end) for doc_id, start, end in base.sentences[:s1])
        chunk_sentences.extend((first + offset, last + offset) for first, last in base.chunk_sentences[:c1])
        terms.append(base.terms if articles == len(ids) else base.terms.share((0, articles), (0, c1), (0, s1)))
        if copy == 0:
            vector_blocks.append(np.asarray(base.vectors[:c1], dtype=np.float16))
            sentence_blocks.append(np.asarray(base.sentence_vectors[:s1], dtype=np.float16))
        else:
            vector_blocks.append(_mixed(base.vectors[:c1], base.vectors[rng.integers(0, total, c1)], rng))
            sentence_blocks.append(_mixed(base.sentence_vectors[:s1], base.vectors[rng.integers(0, total, s1)], rng))
    return IndexData(documents, chunks, np.concatenate(vector_blocks), sentences, np.concatenate(sentence_blocks),
                     chunk_sentences, terms=lexical.merge(terms))


def write_version(data: IndexData, settings: Settings, index_dir: Path) -> tuple[IndexData, float]:
    """Write `data` as a version, as a build does after embedding; returns it and the seconds taken."""
    fields = {"model": indexing.model_tag(settings), "chunking": indexing.chunking_settings(settings)}
    started = time.perf_counter()
    assert data.terms is not None
    with ThreadPoolExecutor(max_workers=1) as pool:
        bm25 = pool.submit(lexical.bm25_indexes, data.terms)
        written = store.write(index_dir, data, fields, None, bm25)
    return written, time.perf_counter() - started


# --- measuring ------------------------------------------------------------------------------------


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int, block: int = 65_536) -> np.ndarray:
    """Rows of the k best inner products of each query over every stored vector, best first."""
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_rows = np.zeros((len(queries), 0), dtype=np.int64)
    for at in range(0, len(vectors), block):
        scores = queries @ np.asarray(vectors[at:at + block], dtype=np.float32).T
        rows = np.broadcast_to(np.arange(at, at + scores.shape[1]), scores.shape)
        scores = np.concatenate([best_scores, scores], axis=1)
        rows = np.concatenate([best_rows, rows], axis=1)
        keep = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best_scores, best_rows = np.take_along_axis(scores, keep, 1), np.take_along_axis(rows, keep, 1)
    return best_rows


def recall(dense: store.DenseIndex, vectors: np.ndarray, queries: np.ndarray) -> dict[str, float]:
    """recall@10 and @50 of the FAISS index against exact search, and its search time (one thread)."""
    import faiss

    truth = exact_top(vectors, queries, 50)
    faiss.omp_set_num_threads(1)
    started = time.perf_counter()
    found = np.stack([dense.search(query.reshape(1, -1), 50)[1][0] for query in queries])
    search_ms = (time.perf_counter() - started) / len(queries) * 1000
    out = {"search_ms": search_ms}
    for k in (10, 50):
        out[f"recall@{k}"] = float(np.mean([len(set(found[i, :k]) & set(truth[i, :k])) / k for i in range(len(queries))]))
    return out


def serve_figures(index_dir: Path, questions: list[str], log_path: Path) -> dict[str, float]:
    """A server process on the version (no folder sync): start-up, /ask p50 and p95 one at a time, memory."""
    port = free_port()
    command = [sys.executable, "-m", "qa.tools.scale_bench", "--serve-index", str(index_dir), "--port", str(port)]
    started = time.perf_counter()
    with log_path.open("wb") as handle:
        process = subprocess.Popen(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}; see {log_path}")
            try:
                latencies, _ = asyncio.run(_clients(port, questions[:1], 1))
                break
            except OSError:
                time.sleep(0.05)
        start_up = time.perf_counter() - started
        latencies, _ = asyncio.run(_clients(port, questions[1:], 1))
        status = dict(line.split(":", 1) for line in Path(f"/proc/{process.pid}/status").read_text().splitlines()
                      if ":" in line)
    finally:
        process.terminate()
        process.wait(timeout=30)
    mib = lambda field: int(status[field].split()[0]) / 1024  # noqa: E731
    return {"start_s": start_up, "ask_p50_ms": percentile(latencies, 50) * 1000,
            "ask_p95_ms": percentile(latencies, 95) * 1000, "rss_mib": mib("VmRSS"), "peak_rss_mib": mib("VmHWM")}


def folder_size(folder: Path) -> dict[str, float]:
    sizes = {path.name: path.stat().st_size / 2**20 for path in folder.iterdir() if path.is_file()}
    return {"total_mib": sum(sizes.values()), "dense_mib": sizes.get("dense.faiss", 0.0),
            "vectors_mib": sizes.get("vectors.npy", 0.0) + sizes.get("sentence_vectors.npy", 0.0)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ..embedding import create

    base, settings, questions = base_index(args)
    questions = questions[:args.questions + 1]
    log(f"base: {len(base.chunks)} passages, {len(base.sentences)} sentences; making {args.scale} passages")
    if args.compress != "auto":
        compression.COMPRESS_ABOVE = 0 if args.compress == "yes" else 10**12
    data = synthesize(base, args.scale)
    del base
    index_dir = args.cache / f"index-{args.scale}-{args.compress}"
    written, seconds = write_version(data, settings, index_dir)
    log(f"wrote {len(written.chunks)} passages ({written.manifest['faiss']}) in {seconds:.1f}s")
    del data, written
    opens = []
    for _ in range(3):  # what a worker's switch to a new version costs: opening it, checksums and all
        started = time.perf_counter()
        opened = store.load(index_dir)  # as a server opens it: read from its files when large
        opens.append(time.perf_counter() - started)
    embedder = create(settings.model, settings.batch_size, settings.backend, settings.cache_dir)
    queries = np.asarray(embedder.embed(questions[1:]), dtype=np.float32)
    assert opened.faiss_index is not None
    figures = {"passages": len(opened.chunks), "sentences": len(opened.sentences), "faiss": opened.manifest["faiss"],
               "build_s": seconds, "open_s": sorted(opens)[1], **folder_size(index_dir / opened.version),
               **recall(opened.faiss_index, opened.vectors, queries)}
    del opened
    figures.update(serve_figures(index_dir, questions, args.cache / f"serve-{args.scale}.log"))
    return figures


def render(rows: list[dict[str, Any]]) -> str:
    lines = [f"`qa bench --scale` at {git_commit()}, {cores()} cores, load average {load_average()}:", "",
             "| passages | sentences | FAISS | build s | folder MiB | dense.faiss MiB | vector files MiB | recall@10 | "
             "recall@50 | FAISS ms | open s | server start s | /ask p50 ms | /ask p95 ms | RSS MiB | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['passages']:,} | {r['sentences']:,} | {r['faiss']} | {r['build_s']:.1f} | {r['total_mib']:.0f} | "
                     f"{r['dense_mib']:.0f} | {r['vectors_mib']:.0f} | {r['recall@10']:.3f} | {r['recall@50']:.3f} | "
                     f"{r['search_ms']:.2f} | {r['open_s']:.2f} | {r['start_s']:.1f} | {r['ask_p50_ms']:.1f} | {r['ask_p95_ms']:.1f} | "
                     f"{r['rss_mib']:.0f} | {r['peak_rss_mib']:.0f} |")
    return "\n".join(lines)


def _serve_index(index_dir: Path, port: int) -> None:
    """The server process of serve_figures: one index version, no articles folder to sync with."""
    import tempfile

    import uvicorn

    from ..api import create_app, limit_threads
    from ..assistant import Assistant

    limit_threads()
    with tempfile.TemporaryDirectory() as empty:
        assistant = Assistant(resolve({"docs_dir": empty, "index_dir": index_dir}))
        assistant.load()
        assistant.embedder.embed(["warm up"])
        uvicorn.run(create_app(assistant), host="127.0.0.1", port=port, log_level="warning")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qa bench --scale", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--scale", type=int, nargs="+", metavar="N", help="passages in the synthetic index")
    parser.add_argument("--compress", choices=("auto", "yes", "no"), default="auto",
                        help=f"compress the index (auto: above {compression.COMPRESS_ABOVE:,} passages)")
    parser.add_argument("--base-articles", type=int, default=800, help="articles of each dataset in the real base")
    parser.add_argument("--questions", type=int, default=200, help="real questions for recall and /ask")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "eval", help="benchmark data")
    parser.add_argument("--cache", type=Path, default=REPO / "bench" / ".cache" / "scale", help="indexes and logs")
    parser.add_argument("--serve-index", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.serve_index is not None:
        _serve_index(args.serve_index, args.port)
        return 0
    if not args.scale:
        parser.error("give --scale N")
    args.cache.mkdir(parents=True, exist_ok=True)
    rows = []
    for scale in args.scale:
        args_at = argparse.Namespace(**{**vars(args), "scale": scale})
        rows.append(run(args_at))
        log(json.dumps(rows[-1]))
    print(render(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
