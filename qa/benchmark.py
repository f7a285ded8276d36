"""`qa bench` (python -m qa.benchmark): speed and memory of indexing and answering, against the targets.

What it measures, in one run, on this machine:

- the floor: the bare model's query-encode time (and sentence-transformers torch for reference);
- a full index build of a large corpus (SQuAD v1.1 dev and SciFact from ../shared/eval, each
  entry written as an article into bench/.cache/perf/docs), in passages per second, beside plain
  sentence-transformers torch encoding of the same passages; nDCG@10 of both models' vectors;
- adding one article to that index and removing it again, in seconds;
- one question in process, split into query encoding, FAISS search, lexical search, fusion and
  the answer sentence; CPU time per question; exact against approximate (HNSW) FAISS search;
- the real server (`python -m qa.cli serve`) on the seed articles and on the large corpus:
  cold start (process start to first answer, index already built), /ask latency p50/p95/p99
  one at a time and with 8 and 32 concurrent clients, requests per second, the server's CPU time
  per question, a cache hit, and its peak RSS (VmHWM).

Every timed question is distinct, so none is served from the answer cache (cache hits are
measured on their own). Results replace the "## Performance" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from . import evaluation
from .config import Settings, resolve

REPO = Path(__file__).resolve().parent.parent
SECTION = "## Performance"
DATASETS = {"squad": "squad-v1.1-dev", "scifact": "scifact"}
SQUAD_QUERIES = 3000  # the SQuAD dev questions nDCG is reported on (the first 3,000, as `qa eval` does)
TARGETS_TEXT = {
    "p50": "/ask p50 over HTTP <= 1.3x the bare query encode (large corpus)",
    "rps": "requests/s at 8 clients >= 70% of the CPU limit (cores / CPU time per question)",
    "add": "adding one article <= 3% of the full build time (large corpus)",
    "build": "full build >= 2x the passages/s of sentence-transformers torch on the same passages",
    "ndcg": "nDCG@10 within 0.005 of the torch model (SQuAD dev, SciFact)",
    "rss": "server peak RSS <= 1 GB (large corpus)",
    "cold": "cold start <= 5 s with a built index (large corpus)",
}

Log = Callable[[str], None]


# --- the large corpus --------------------------------------------------------------------------


@dataclass
class Corpus:
    """Benchmark articles on disk, and the questions that go with them."""

    docs_dir: Path
    index_dir: Path
    questions: dict[str, list[dict[str, Any]]]  # dataset -> queries whose articles are all in the corpus
    qrels: dict[str, dict[str, set[str]]]  # dataset -> query id -> relevant article ids
    timing: list[str]  # distinct question texts for timing (every query of both sets)


_jsonl = evaluation._jsonl


def _qrels(path: Path, prefix: str) -> dict[str, set[str]]:
    relevant: dict[str, set[str]] = {}
    with path.open(encoding="utf-8") as handle:
        next(handle)  # header line
        for line in handle:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 3 and float(parts[2]) > 0:
                relevant.setdefault(parts[0], set()).add(prefix + parts[1])
    return relevant


def sync_articles(files: dict[str, bytes], docs_dir: Path) -> int:
    """Make docs_dir hold exactly these article files, rewriting only what changed."""
    docs_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    for name, data in files.items():
        path = docs_dir / name
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)
            written += 1
    for path in docs_dir.iterdir():
        if path.is_file() and path.name not in files:
            path.unlink()
    return written


def load_corpus(data_dir: Path, cache_dir: Path, limit: int | None) -> Corpus:
    """SQuAD v1.1 dev and SciFact entries as article files (title line, blank line, text)."""
    files: dict[str, bytes] = {}
    questions: dict[str, list[dict[str, Any]]] = {}
    every: dict[str, list[dict[str, Any]]] = {}
    qrels: dict[str, dict[str, set[str]]] = {}
    for name, folder in DATASETS.items():
        path = data_dir / folder
        if not (path / "corpus.jsonl").is_file():
            raise FileNotFoundError(f"{path / 'corpus.jsonl'} is missing; pass --data DIR")
        rows = _jsonl(path / "corpus.jsonl")[:limit]
        for row in rows:
            title = " ".join(str(row.get("title", "")).split())
            text = f"{title}\n\n{row['text'].strip()}\n" if title else row["text"].strip() + "\n"
            doc_id = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{name}-{row['id']}")
            files[doc_id + ".txt"] = text.encode("utf-8")
        qrels[name] = _qrels(path / "qrels.tsv", f"{name}-")
        kept = {f"{name}-{row['id']}" for row in rows}
        every[name] = _jsonl(path / "queries.jsonl")
        questions[name] = [q for q in every[name]
                           if qrels[name].get(str(q["id"])) and qrels[name][str(q["id"])] <= kept]
    folder = cache_dir / ("quick" if limit else "large")
    sync_articles(files, folder / "docs")
    # Timing uses SQuAD questions after the ones nDCG is reported on first, then SciFact's, then the rest.
    squad = every["squad"]
    timing = distinct([q["text"] for q in [*squad[SQUAD_QUERIES:], *every["scifact"], *squad[:SQUAD_QUERIES]]])
    return Corpus(folder / "docs", folder / "index", questions, qrels, timing)


def distinct(texts: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    kept = []
    for text in texts:
        text = " ".join(text.split())
        if text and text not in seen:
            seen.add(text)
            kept.append(text)
    return kept


class Pool:
    """Hands out each question once, so no timed request is an answer-cache hit."""

    def __init__(self, questions: list[str]) -> None:
        self._questions = questions
        self._next = 0

    def take(self, n: int) -> list[str]:
        if self._next + n > len(self._questions):
            raise RuntimeError(f"out of distinct questions ({len(self._questions)}); ask for fewer requests")
        taken = self._questions[self._next:self._next + n]
        self._next += n
        return taken


# --- small helpers -------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("+changes" if dirty.stdout.strip() else "") if out.returncode == 0 else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


class TimedEmbedder:
    """Wraps an embedder to add up the time spent embedding (to split a build into its parts)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.seconds = 0.0
        self.texts = 0
        if hasattr(inner, "embed_spans"):  # only then may indexing find and use it
            self.embed_spans = self._embed_spans

    def _embed_spans(self, texts: Sequence[str], spans: Any, *, progress: bool = False) -> Any:
        started = time.perf_counter()
        try:
            return self.inner.embed_spans(texts, spans, progress=progress)
        finally:
            self.seconds += time.perf_counter() - started
            self.texts += len(texts)

    @property
    def dimension(self) -> int:
        return int(self.inner.dimension)

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        started = time.perf_counter()
        try:
            return self.inner.embed(texts, progress=progress)
        finally:
            self.seconds += time.perf_counter() - started
            self.texts += len(texts)


def backend_of(settings: Settings, override: str | None) -> str:
    from .embedding import DEFAULT_BACKEND

    return str(override or getattr(settings, "backend", None) or DEFAULT_BACKEND)


def make_embedder(settings: Settings, backend: str) -> Any:
    from .embedding import create

    cache_dir = getattr(settings, "cache_dir", None)
    return create(settings.model, settings.batch_size, backend=backend, cache_dir=cache_dir)


def encode_times(embedder: Any, questions: Sequence[str]) -> list[float]:
    """Seconds to encode each question alone, as a request does."""
    embedder.embed(questions[:1])
    times = []
    for question in questions:
        started = time.perf_counter()
        embedder.embed([question])
        times.append(time.perf_counter() - started)
    return times


# --- build, add, remove ------------------------------------------------------------------------------


def measure_build(settings: Settings, embedder: Any, log: Log) -> dict[str, Any]:
    from .assistant import Assistant

    timed = TimedEmbedder(embedder)
    assistant = Assistant(settings, timed)
    started = time.perf_counter()
    report = assistant.build(full=True)
    seconds = time.perf_counter() - started
    data = assistant.snapshot().data
    log(f"full build: {report.passages} passages, {len(data.sentences)} sentences in {seconds:.1f}s "
        f"({report.passages / seconds:.1f} passages/s; embedding {timed.seconds:.1f}s)")
    result = {"assistant": assistant, "timed": timed, "seconds": seconds, "documents": report.documents,
              "passages": report.passages, "sentences": len(data.sentences), "embed_seconds": timed.seconds,
              "passages_per_s": report.passages / seconds}
    return result


def measure_add_remove(assistant: Any, timed: TimedEmbedder, article: Path, log: Log) -> dict[str, Any]:
    from .assistant import Upload

    doc_id = "zz-bench-added"
    data = article.read_bytes()
    before = timed.seconds
    started = time.perf_counter()
    assistant.add([Upload(doc_id + ".txt", data)])
    add_seconds = time.perf_counter() - started
    add_embed = timed.seconds - before
    started = time.perf_counter()
    assistant.remove(doc_id)
    remove_seconds = time.perf_counter() - started
    log(f"add one article: {add_seconds:.2f}s (embedding {add_embed:.2f}s); remove it: {remove_seconds:.2f}s")
    return {"add": add_seconds, "add_embed": add_embed, "remove": remove_seconds}


# --- quality of the fast model against torch ------------------------------------------------------------


def ndcg_at_10(ranked: Sequence[str], relevant: set[str]) -> float:
    dcg = sum(1 / math.log2(i + 2) for i, doc in enumerate(ranked[:10]) if doc in relevant)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), 10)))
    return dcg / ideal if ideal else 0.0


def dense_ndcg(passage_vectors: np.ndarray, passage_docs: Sequence[str], query_vectors: np.ndarray,
               relevant: Sequence[set[str]]) -> float:
    """Mean nDCG@10 over articles ranked by their best passage's cosine (exact search).

    An article's passages are consecutive rows, as the index keeps them.
    """
    starts = [i for i, doc in enumerate(passage_docs) if i == 0 or doc != passage_docs[i - 1]]
    docs = [passage_docs[i] for i in starts]
    scores = []
    for first in range(0, len(query_vectors), 256):
        best = np.maximum.reduceat(query_vectors[first:first + 256] @ passage_vectors.T, starts, axis=1)
        top = np.argsort(-best, axis=1)[:, :10]
        for row, ranked in enumerate(top):
            scores.append(ndcg_at_10([docs[j] for j in ranked], relevant[first + row]))
    return float(np.mean(scores)) if scores else float("nan")


def compare_quality(data: Any, fast_vectors: np.ndarray, torch_vectors: np.ndarray, fast: Any, torch_model: Any,
                    corpus: Corpus, log: Log) -> dict[str, dict[str, float]]:
    """Dense nDCG@10 of the built index's vectors and of torch's, per dataset (queries embedded by each)."""
    result: dict[str, dict[str, float]] = {}
    passage_docs = [c.doc_id for c in data.chunks]
    for name in DATASETS:
        rows = [i for i, doc in enumerate(passage_docs) if doc.startswith(name + "-")]
        queries = corpus.questions[name][:SQUAD_QUERIES] if name == "squad" else corpus.questions[name]
        if not rows or not queries:
            continue
        texts = [q["text"] for q in queries]
        relevant = [corpus.qrels[name][str(q["id"])] for q in queries]
        docs = [passage_docs[i] for i in rows]
        fast_score = dense_ndcg(fast_vectors[rows], docs, fast.embed(texts), relevant)
        torch_score = dense_ndcg(torch_vectors[rows], docs, torch_model.embed(texts), relevant)
        result[name] = {"fast": fast_score, "torch": torch_score, "queries": len(queries)}
        log(f"{name}: dense nDCG@10 {fast_score:.4f} (this backend) vs {torch_score:.4f} (torch), {len(queries)} queries")
    return result


# --- one question, in process -----------------------------------------------------------------------------


def split_question(assistant: Any, questions: Sequence[str]) -> dict[str, float]:
    """Median milliseconds of each stage of answering, the way Assistant._answer runs them."""
    from . import answer as answering
    from .retrieval import DEPTH, best_rows, tidy

    snapshot = assistant.snapshot()
    retriever = snapshot.retriever
    settings = assistant.settings
    stages: dict[str, list[float]] = {k: [] for k in ("encode", "faiss", "lexical", "fusion", "answer", "total")}
    for question in questions:
        t0 = time.perf_counter()
        query = assistant.embedder.embed([question])[0]
        t1 = time.perf_counter()
        retriever.dense_scores(query, DEPTH)
        t2 = time.perf_counter()
        terms = retriever.lexicon.terms(question)
        best_rows(retriever.lexical_scores(terms), DEPTH)
        t3 = time.perf_counter()
        # ranked() runs FAISS and BM25 again inside: what it costs beyond them is the fusion (and tidy).
        ranked = retriever.ranked(query, question, mode="hybrid", rrf_k=settings.rrf_k,
                                  dense_weight=settings.dense_weight, terms=terms)
        hits = tidy(ranked, settings.top_k, settings.max_per_doc)
        t4 = time.perf_counter()
        answering.choose(query, terms, hits, snapshot.data, retriever, settings.answer_threshold)
        t5 = time.perf_counter()
        encode, faiss_s, lexical, search, answer = t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4
        for key, value in (("encode", encode), ("faiss", faiss_s), ("lexical", lexical),
                           ("fusion", max(search - faiss_s - lexical, 0.0)), ("answer", answer),
                           ("total", encode + search + answer)):
            stages[key].append(value)
    return {k: statistics.median(v) * 1000 for k, v in stages.items()}


def ask_in_process(assistant: Any, questions: Sequence[str]) -> dict[str, float]:
    """Assistant.ask on distinct questions: median wall time and CPU time per question."""
    assistant.ask(questions[0])
    times = []
    cpu = time.process_time()
    for question in questions[1:]:
        started = time.perf_counter()
        assistant.ask(question)
        times.append(time.perf_counter() - started)
    cpu = time.process_time() - cpu
    return {"p50": statistics.median(times) * 1000, "cpu_ms": cpu / len(times) * 1000}


def faiss_recall(vectors: np.ndarray, queries: np.ndarray, in_use: str) -> dict[str, Any]:
    """Approximate search as store.py builds it (forced on, whatever the corpus size) against exact search.

    Also the cost of growing the approximate index by a few passages, as adding an article does.
    """
    import faiss

    from . import store
    from .retrieval import DEPTH

    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    threshold = store.APPROXIMATE_ABOVE
    started = time.perf_counter()
    store.APPROXIMATE_ABOVE = -1  # make_faiss_index picks the approximate index above this size
    try:
        approx = store.make_faiss_index(vectors)
    finally:
        store.APPROXIMATE_ABOVE = threshold
    build = time.perf_counter() - started
    # An add grows a copy of the live graph (store.dense_index): here by three passages, about one article.
    started = time.perf_counter()
    faiss.clone_index(approx).add(np.ascontiguousarray(queries[:3], dtype=np.float32))
    grow = time.perf_counter() - started
    result: dict[str, Any] = {"passages": len(vectors), "approx_build_s": build, "approx_grow_s": grow,
                              "threshold": threshold, "in_use": in_use, "approx_kind": type(approx).__name__,
                              "depth": DEPTH}
    for name, index in (("exact", exact), ("approx", approx)):
        times = []
        for row in queries[:200]:
            started = time.perf_counter()
            index.search(row.reshape(1, -1), DEPTH)
            times.append(time.perf_counter() - started)
        result[f"{name}_ms"] = statistics.median(times) * 1000
    _, truth = exact.search(queries, DEPTH)
    _, found = approx.search(queries, DEPTH)
    for name, k in (("recall10", 10), ("recall_depth", DEPTH)):
        hits = sum(len(set(t[:k]) & set(f[:k])) for t, f in zip(truth, found))
        result[name] = hits / (k * len(queries))
    return result


# --- the real server --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _request(question: str) -> bytes:
    body = json.dumps({"question": question}).encode()
    return (b"POST /ask HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, question: str) -> tuple[int, bytes]:
    writer.write(_request(question))
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = await reader.readexactly(length)
    return status, body


async def _clients(port: int, questions: list[str], concurrency: int) -> tuple[list[float], float]:
    """Send every question once from `concurrency` keep-alive connections; latencies and wall time."""
    queue = list(reversed(questions))
    latencies: list[float] = []

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while queue:
                question = queue.pop()
                started = time.perf_counter()
                status, body = await _exchange(reader, writer, question)
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    raise RuntimeError(f"/ask answered {status}: {body[:200]!r}")
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    cold_start: float = 0.0


def start_server(docs_dir: Path, index_dir: Path, log_path: Path, question: str, env: dict[str, str],
                 timeout: float = 300.0) -> Server:
    """`python -m qa.cli serve` on a free port; cold start is process start to the first 200 from /ask."""
    port = free_port()
    command = [sys.executable, "-m", "qa.cli", "serve", "--docs", str(docs_dir), "--index", str(index_dir),
               "--port", str(port)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handle = log_path.open("wb")
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, env=env)
    request = _request(question)
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}; see {log_path}")
        if time.perf_counter() - started > timeout:
            stop_server(Server(process, port, log_path))
            raise RuntimeError(f"the server did not answer within {timeout:.0f}s; see {log_path}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
                sock.sendall(request)
                reply = sock.recv(64)
                if reply.startswith(b"HTTP/1.1 200"):
                    return Server(process, port, log_path, time.perf_counter() - started)
        except OSError:
            pass
        time.sleep(0.01)


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGINT)
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


def http_figures(server: Server, pool: Pool, sizes: dict[str, int], floor: Callable[[], float] | None,
                 log: Log, label: str) -> dict[str, Any]:
    """Latency one at a time and at 8 and 32 clients, throughput, CPU per question, cache hit, RSS."""
    pid, port = server.process.pid, server.port
    asyncio.run(_clients(port, pool.take(20), 1))  # warm: first requests compile and fill what is lazy
    result: dict[str, Any] = {"cold_start": server.cold_start}
    if floor is not None:
        result["floor_ms"] = floor()
    for concurrency in (1, 8, 32):
        questions = pool.take(sizes[f"c{concurrency}"])
        cpu_before = proc_cpu_seconds(pid)
        client_cpu = time.process_time()
        latencies, wall = asyncio.run(_clients(port, questions, concurrency))
        server_cpu = proc_cpu_seconds(pid) - cpu_before
        client_cpu = time.process_time() - client_cpu
        result[f"c{concurrency}"] = {
            "n": len(latencies), "p50": percentile(latencies, 50) * 1000, "p95": percentile(latencies, 95) * 1000,
            "p99": percentile(latencies, 99) * 1000, "rps": len(latencies) / wall,
            "server_cpu_ms": server_cpu / len(latencies) * 1000, "client_cpu_ms": client_cpu / len(latencies) * 1000,
        }
        row = result[f"c{concurrency}"]
        log(f"{label} c={concurrency}: p50 {row['p50']:.2f} ms, p95 {row['p95']:.2f}, p99 {row['p99']:.2f}, "
            f"{row['rps']:.0f} req/s, CPU per question: server {row['server_cpu_ms']:.2f} ms, "
            f"load generator {row['client_cpu_ms']:.2f} ms")
    repeated = questions[-50:]  # the most recent, so still in the LRU answer cache
    hits, _ = asyncio.run(_clients(port, repeated, 1))
    result["cache_hit_p50"] = percentile(hits, 50) * 1000
    result["rss"] = proc_peak_rss(pid)
    log(f"{label}: cache hit p50 {result['cache_hit_p50']:.2f} ms; peak RSS {result['rss'] / 2**20:.0f} MiB; "
        f"cold start {server.cold_start:.2f}s")
    return result


# --- report ---------------------------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def evaluate_targets(r: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for every target the run could measure."""
    rows: list[tuple[str, str, bool | None]] = []
    large = r.get("http", {}).get("large")
    if large and large.get("floor_ms"):
        ratio = large["c1"]["p50"] / large["floor_ms"]
        rows.append((TARGETS_TEXT["p50"], f"{large['c1']['p50']:.2f} ms / {large['floor_ms']:.2f} ms = {ratio:.2f}x",
                     ratio <= 1.3))
    if large:
        limit = r["cores"] / (large["c1"]["server_cpu_ms"] / 1000)
        share = large["c8"]["rps"] / limit
        rows.append((TARGETS_TEXT["rps"], f"{large['c8']['rps']:.0f} req/s of {limit:.0f} "
                     f"({r['cores']} cores / {large['c1']['server_cpu_ms']:.2f} ms) = {share:.0%}", share >= 0.70))
    if "add" in r:
        share = r["add"]["add"] / r["build"]["seconds"]
        rows.append((TARGETS_TEXT["add"], f"{r['add']['add']:.2f} s / {r['build']['seconds']:.1f} s = {share:.1%}",
                     share <= 0.03))
    if "torch_passages_per_s" in r:
        ratio = r["build"]["passages_per_s"] / r["torch_passages_per_s"]
        text = f"{r['build']['passages_per_s']:.1f} / {r['torch_passages_per_s']:.1f} passages/s = {ratio:.2f}x"
        rows.append((TARGETS_TEXT["build"], text, ratio >= 2.0))
    if r.get("quality"):
        gaps = {name: q["fast"] - q["torch"] for name, q in r["quality"].items()}
        text = ", ".join(f"{name} {q['fast']:.4f} vs {q['torch']:.4f} ({gaps[name]:+.4f})" for name, q in r["quality"].items())
        rows.append((TARGETS_TEXT["ndcg"], text, all(abs(g) <= 0.005 for g in gaps.values())))
    if large:
        rows.append((TARGETS_TEXT["rss"], f"{large['rss'] / 2**20:.0f} MiB", large["rss"] <= 2**30))
        rows.append((TARGETS_TEXT["cold"], f"{large['cold_start']:.2f} s", large["cold_start"] <= 5.0))
    return rows


def render(r: dict[str, Any]) -> str:
    lines = [SECTION, ""]
    lines.append(f"`qa bench` on {r['date']}: {r['cores']} cores ({r['cpu']}), load average {r['load_start']} at the "
                 f"start and {r['load_end']} at the end; backend `{r['backend']}`, model `{r['model']}`, commit {r['commit']}"
                 + (" (a --quick run on a small corpus)" if r["quick"] else "") + ".")
    lines.append("")
    lines.append(f"Large corpus: {r['build']['documents']:,} articles (SQuAD v1.1 dev and SciFact), "
                 f"{r['build']['passages']:,} passages and {r['build']['sentences']:,} sentences. "
                 "Every timed question is distinct, so none is an answer-cache hit.")
    lines += ["", "### Targets", "", "| target | measured | met |", "|---|---|---|"]
    for target, measured, met in evaluate_targets(r):
        lines.append(f"| {target} | {measured} | {'yes' if met else 'no' if met is not None else '?'} |")
    lines += ["", "### Indexing", "", "| what | figure |", "|---|---|"]
    b = r["build"]
    lines.append(f"| full build ({b['passages']:,} passages + {b['sentences']:,} sentence vectors) | {b['seconds']:.1f} s, "
                 f"{b['passages_per_s']:.1f} passages/s (embedding {b['embed_seconds']:.1f} s) |")
    if "torch_passages_per_s" in r:
        lines.append(f"| sentence-transformers torch, same passages, batch {r['batch_size']} | "
                     f"{r['torch_seconds']:.1f} s, {r['torch_passages_per_s']:.1f} passages/s |")
    if "add" in r:
        lines.append(f"| add one article (a seed article) | {r['add']['add']:.2f} s (embedding {r['add']['add_embed']:.2f} s) |")
        lines.append(f"| remove it | {r['add']['remove']:.2f} s |")
    for name, q in r.get("quality", {}).items():
        lines.append(f"| dense nDCG@10, {name} ({q['queries']:,} queries): this backend / torch | "
                     f"{q['fast']:.4f} / {q['torch']:.4f} |")
    lines += ["", "### One question, in process (median ms, large corpus)", "",
              "| query encoding | FAISS search | lexical search | rest of search (fusion, tidy) | answer sentence | sum | Assistant.ask | CPU per ask |",
              "|---|---|---|---|---|---|---|---|"]
    s, a = r["split"], r["in_process"]
    lines.append(f"| {_ms(s['encode'])} | {_ms(s['faiss'])} | {_ms(s['lexical'])} | {_ms(s['fusion'])} | {_ms(s['answer'])} | "
                 f"{_ms(s['total'])} | {_ms(a['p50'])} | {_ms(a['cpu_ms'])} |")
    f = r["floor"]
    lines += ["", "### Floor: the bare model encoding one question (median ms)", "", "| backend | ms |", "|---|---|"]
    lines.append(f"| {r['backend']} (the default; measured again just before the HTTP runs: "
                 f"{_ms(r['http']['large'].get('floor_ms', float('nan')))}) | {_ms(f['default'])} |")
    if "torch" in f:
        lines.append(f"| torch (sentence-transformers) | {_ms(f['torch'])} |")
    lines += ["", "### /ask over HTTP (ms; requests per second)", "",
              "| corpus | clients | requests | p50 | p95 | p99 | req/s | server CPU per question | load generator CPU |",
              "|---|---|---|---|---|---|---|---|---|"]
    for label, h in r["http"].items():
        for concurrency in (1, 8, 32):
            c = h[f"c{concurrency}"]
            lines.append(f"| {label} | {concurrency} | {c['n']} | {_ms(c['p50'])} | {_ms(c['p95'])} | {_ms(c['p99'])} | "
                         f"{c['rps']:.0f} | {_ms(c['server_cpu_ms'])} | {_ms(c['client_cpu_ms'])} |")
    lines += ["", "| corpus | cold start | peak RSS | cache hit p50 |", "|---|---|---|---|"]
    for label, h in r["http"].items():
        lines.append(f"| {label} | {h['cold_start']:.2f} s | {h['rss'] / 2**20:.0f} MiB | {_ms(h['cache_hit_p50'])} ms |")
    if "faiss" in r:
        x = r["faiss"]
        lines += ["", "### Exact against approximate FAISS search (large corpus)", "",
                  f"store.py builds an exact inner-product index up to {x['threshold']:,} passages and an approximate "
                  f"one ({x['approx_kind']}) above; this corpus has {x['passages']:,} passages, so it uses "
                  f"`{x['in_use']}`. Both, on the same vectors, one query at a time:", "",
                  f"| index | search, depth {x['depth']} (median ms) | recall@10 | recall@{x['depth']} |",
                  "|---|---|---|---|",
                  f"| exact (IndexFlatIP) | {_ms(x['exact_ms'])} | 1 | 1 |",
                  f"| {x['approx_kind']} (built in {x['approx_build_s']:.1f} s) | {_ms(x['approx_ms'])} | "
                  f"{x['recall10']:.4f} | {x['recall_depth']:.4f} |", "",
                  f"Adding an article grows a copy of the graph instead of building it again: copying it and adding "
                  f"three passages took {x['approx_grow_s']:.2f} s."]
    lines += ["", "Cold start is process start to the first 200 from /ask with the index already built. Peak RSS is the "
              "server's VmHWM after every run. CPU limit = cores / the server's CPU time per question when asked one "
              "at a time; the load generator (asyncio, keep-alive connections) runs on the same cores.", ""]
    return "\n".join(lines)


def replace_section(document: str, section: str) -> str:
    """Swap the '## Performance' section of the results file for a new one."""
    return evaluation.replace_section(document, section, SECTION)


# --- command ---------------------------------------------------------------------------------------------------


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qa bench", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--data", type=Path, metavar="DIR", help="benchmark data (default ../shared/eval beside the repo)")
    parser.add_argument("--cache", type=Path, metavar="DIR", help="articles, indexes and logs (default bench/.cache/perf)")
    parser.add_argument("--out", type=Path, metavar="FILE", help="results file to update (default bench/RESULTS.md)")
    parser.add_argument("--no-write", action="store_true", help="print the section, do not touch the results file")
    parser.add_argument("--quick", action="store_true",
                        help="a small corpus and few requests, to try the command (not written unless --out)")
    parser.add_argument("--backend", help="embedding backend to measure (default: the configured one)")
    parser.add_argument("--skip-torch", action="store_true", help="skip the torch baseline (no build ratio, no nDCG)")
    parser.add_argument("--requests", type=int, metavar="N", help="requests per concurrency level (default 400, quick 60)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Two benchmarks of their own, in qa/tools: server processes (--workers) and index size (--scale).
    flags = {arg.split("=", 1)[0] for arg in argv}
    if "--workers" in flags:
        from .tools.serve_bench import main as bench_workers

        return bench_workers(argv)
    if "--scale" in flags:
        from .tools.scale_bench import main as bench_scale

        return bench_scale(argv)
    args = make_parser().parse_args(argv)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from .errors import QAError

    try:
        return _run(args, log)
    except (QAError, FileNotFoundError, RuntimeError) as exc:
        log(f"error: {exc}")
        return 1


def _run(args: argparse.Namespace, log: Log) -> int:
    import importlib
    import logging

    from . import indexing

    importlib.import_module("bm25s")  # importing it sets its logger to DEBUG; quieten it afterwards
    logging.getLogger("bm25s").setLevel(logging.WARNING)

    base = resolve()
    backend = backend_of(base, args.backend)
    data_dir = args.data or REPO.parent / "shared" / "eval"
    cache_dir = args.cache or REPO / "bench" / ".cache" / "perf"
    n = args.requests or (60 if args.quick else 400)
    sizes = {"c1": n, "c8": 2 * n, "c32": 2 * n}
    r: dict[str, Any] = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cores": cores(),
                         "cpu": cpu_model(), "load_start": load_average(), "backend": backend, "model": base.model,
                         "commit": git_commit(), "quick": args.quick}
    log(f"{r['cores']} cores, load average {r['load_start']}; backend {backend}")

    corpus = load_corpus(data_dir, cache_dir, 150 if args.quick else None)
    base = replace(base, backend=backend) if hasattr(base, "backend") else base
    settings = replace(base, docs_dir=corpus.docs_dir, index_dir=corpus.index_dir)
    embedder = make_embedder(settings, backend)
    pool = Pool(corpus.timing)

    # The floor, before anything else loads the machine.
    embedder.embed(["warm up"])
    r["floor"] = {"default": statistics.median(encode_times(embedder, pool.take(200))) * 1000}
    torch_model = None
    if not args.skip_torch:
        torch_model = make_embedder(settings, "torch") if backend != "torch" else embedder
        torch_model.embed(["warm up"])
        r["floor"]["torch"] = statistics.median(encode_times(torch_model, pool.take(200))) * 1000
    log(f"bare query encode: {r['floor']}")

    r["build"] = measure_build(settings, embedder, log)
    assistant = r["build"].pop("assistant")
    timed = r["build"].pop("timed")
    data = assistant.snapshot().data
    if torch_model is not None:
        texts = [c.text for c in data.chunks]
        started = time.perf_counter()
        torch_vectors = torch_model.embed(texts)
        r["torch_seconds"] = time.perf_counter() - started
        r["torch_passages_per_s"] = len(texts) / r["torch_seconds"]
        r["batch_size"] = torch_model.batch_size
        log(f"sentence-transformers torch: {len(texts)} passages in {r['torch_seconds']:.1f}s "
            f"({r['torch_passages_per_s']:.1f} passages/s)")
        r["quality"] = compare_quality(data, data.vectors, torch_vectors, embedder, torch_model, corpus, log)
        del torch_vectors

    # From here on, the server's thread settings (FAISS and BLAS on one thread per question): with FAISS's
    # default two, its OpenMP worker keeps spinning after each search and takes a core from the next encode.
    # Not earlier: the torch runs above read OMP_NUM_THREADS, which limit_threads sets.
    from .api import limit_threads

    limit_threads()
    article = sorted((REPO / "seeds").glob("*.txt"))[0]
    r["add"] = measure_add_remove(assistant, timed, article, log)

    assistant.embedder = embedder  # no timing wrapper on the question path
    r["split"] = split_question(assistant, pool.take(200))
    r["in_process"] = ask_in_process(assistant, pool.take(200))
    log(f"one question in process (median ms): {r['split']}; Assistant.ask {r['in_process']}")
    queries = embedder.embed(pool.take(500))
    snapshot = assistant.snapshot()
    r["faiss"] = faiss_recall(np.ascontiguousarray(snapshot.data.vectors), queries,
                              str(snapshot.data.manifest.get("faiss", "?")))
    log(f"FAISS: {r['faiss']}")
    del assistant, data, timed

    # The seed articles get their own index, so the repository's index/ is left alone.
    seeds = replace(base, docs_dir=REPO / "seeds", index_dir=cache_dir / "seeds-index")
    indexing.build(seeds, embedder)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "QA_BACKEND": backend}
    r["http"] = {}
    for label, docs, index in (("seeds", seeds.docs_dir, seeds.index_dir), ("large", corpus.docs_dir, corpus.index_dir)):
        server = start_server(docs, index, cache_dir / f"server-{label}.log", pool.take(1)[0], env)
        try:
            floor = None
            if label == "large":
                probe = pool.take(200)
                floor = lambda: statistics.median(encode_times(embedder, probe)) * 1000  # noqa: E731
            r["http"][label] = http_figures(server, pool, sizes, floor, log, label)
        finally:
            stop_server(server)
    r["load_end"] = load_average()

    section = render(r)
    print(section)
    for target, measured, met in evaluate_targets(r):
        log(f"{'MET    ' if met else 'NOT MET'} {target}: {measured}")
    if not args.no_write and (args.out is not None or not args.quick):
        out = args.out or REPO / "bench" / "RESULTS.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        before = out.read_text(encoding="utf-8") if out.is_file() else "# Benchmark results\n"
        out.write_text(replace_section(before, section), encoding="utf-8")
        log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
