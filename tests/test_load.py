"""A bounded load test on loopback: 32 concurrent clients for 60 s against a real server.

Zero errors allowed; latency percentiles are printed and written to tests/artifacts/load.json.
It runs by default (and in CI); deselect it locally with `-m "not load"`. QA_LOAD_SECONDS and
QA_LOAD_CLIENTS change the duration and the concurrency for a local experiment.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from qa import documents

from .conftest import SEEDS
from .test_concurrency import running_server, server_log_problems
from .test_crash import generate_corpus
from .test_reliability import report

pytestmark = pytest.mark.load

SECONDS = float(os.environ.get("QA_LOAD_SECONDS") or 60)
CLIENTS = int(os.environ.get("QA_LOAD_CLIENTS") or 32)
GENERATED_ARTICLES = 60


def question_pool(docs: Path, size: int, rng: random.Random) -> list[str]:
    """Questions made of words from the articles, varied enough that most miss the answer cache."""
    words = []
    for doc in documents.load_all(documents.article_files(docs)):
        words.extend(w for w in re.findall(r"[A-Za-z]{4,}", doc.text))
    return [" ".join(rng.sample(words, rng.randint(3, 9))) + "?" for _ in range(size)]


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list, in milliseconds."""
    index = min(len(ordered) - 1, max(0, int(round(fraction * len(ordered) + 0.5)) - 1))
    return round(ordered[index] * 1000, 2)


def test_32_clients_for_60_seconds_without_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = tmp_path / "docs"
    generate_corpus(docs, GENERATED_ARTICLES, seed=99)
    for seed_file in SEEDS.iterdir():
        shutil.copy(seed_file, docs / seed_file.name)
    rng = random.Random(5)
    questions = question_pool(docs, 2000, rng)
    log_path = tmp_path / "server.log"
    latencies: dict[str, list[float]] = {"POST /ask": [], "GET /ask": [], "GET /health": [], "GET /documents": []}
    errors: list[str] = []
    lock = threading.Lock()

    def client_loop(url: str, number: int, deadline: float) -> None:
        local_rng = random.Random(number)
        mine: dict[str, list[float]] = {key: [] for key in latencies}
        my_errors: list[str] = []
        with httpx.Client(base_url=url, timeout=30) as client:
            while time.monotonic() < deadline:
                roll = local_rng.random()
                question = local_rng.choice(questions)
                started = time.perf_counter()
                try:
                    if roll < 0.75:
                        kind = "POST /ask"
                        response = client.post("/ask", json={"question": question, "top_k": local_rng.randint(1, 10)})
                    elif roll < 0.9:
                        kind = "GET /ask"
                        response = client.get("/ask", params={"q": question, "mode": local_rng.choice(["dense", "lexical"])})
                    elif roll < 0.95:
                        kind = "GET /health"
                        response = client.get("/health")
                    else:
                        kind = "GET /documents"
                        response = client.get("/documents")
                    took = time.perf_counter() - started
                    if response.status_code != 200:
                        my_errors.append(f"{kind}: {response.status_code} {response.text[:200]}")
                    elif kind.endswith("/ask") and not response.json()["passages"]:
                        my_errors.append(f"{kind}: no passages for {question!r}")
                    else:
                        mine[kind].append(took)
                except Exception as exc:  # a refused or dropped connection, a timeout
                    my_errors.append(f"{kind}: {type(exc).__name__}: {exc}")
        with lock:
            for key, values in mine.items():
                latencies[key].extend(values)
            errors.extend(my_errors)

    with running_server(docs, tmp_path / "index", log_path) as url:
        with httpx.Client(base_url=url) as warm:
            for question in questions[:20]:
                assert warm.post("/ask", json={"question": question}).status_code == 200
        started = time.monotonic()
        deadline = started + SECONDS
        threads = [threading.Thread(target=client_loop, args=(url, n, deadline), daemon=True) for n in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=SECONDS + 120)
        elapsed = time.monotonic() - started
        assert not any(thread.is_alive() for thread in threads), "a client never came back"
        still_up = httpx.get(url + "/health", timeout=10).status_code == 200

    every = sorted(value for values in latencies.values() for value in values)
    served = len(every)
    figures = {
        "seconds": round(elapsed, 1), "clients": CLIENTS, "articles": GENERATED_ARTICLES + 5,
        "requests": served + len(errors), "served": served, "errors": len(errors),
        "throughput_per_s": round(served / elapsed, 1),
        **({f"p{int(q * 100)}_ms": percentile(every, q) for q in (0.5, 0.9, 0.95, 0.99)} if every else {}),
        "max_ms": round(every[-1] * 1000, 2) if every else None,
        "by_endpoint": {kind: {"requests": len(values), "p50_ms": percentile(sorted(values), 0.5),
                               "p99_ms": percentile(sorted(values), 0.99)}
                        for kind, values in latencies.items() if values},
    }
    report(capsys, "load", figures)
    log_problems = server_log_problems(log_path)
    assert not errors, f"{len(errors)} errors under load, e.g.:\n" + "\n".join(errors[:20])
    assert not log_problems, "\n".join(log_problems[:20])
    assert still_up and served > CLIENTS * SECONDS  # at least one request per client per second
