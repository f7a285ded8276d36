"""`/ask` latency over HTTP with the reader on and off, on one index, in one run.

    python bench/reader_latency.py [--index bench/.cache/squad/index-onnx-int8] [--docs ...] [--questions 300]

Starts two `qa serve` processes over the same index (QA_READER=off and the default reader), one
after the other on 127.0.0.1, and asks each the same SQuAD v1.1 dev questions (from ../shared/eval)
one at a time, alternating the servers question by question so machine load falls on both alike.
Prints p50 / p95 milliseconds of each and their ratio. Build the index first with `qa eval --sets squad`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(index: Path, docs: Path, reader: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "QA_INDEX_DIR": str(index), "QA_DOCS_DIR": str(docs), "QA_PORT": str(port),
           "QA_READER": reader, "QA_MAX_PER_DOC": "1", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "qa.cli", "serve"], env=env, cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).json().get("loaded"):
                return process, url
        except (httpx.HTTPError, ValueError):
            pass
        if process.poll() is not None:
            raise SystemExit(f"error: the {reader} server exited with {process.returncode}")
        time.sleep(0.5)
    process.kill()
    raise SystemExit("error: the server did not load its index in 300 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, default=REPO / "bench" / ".cache" / "squad" / "index-onnx-int8")
    parser.add_argument("--docs", type=Path, default=REPO / "bench" / ".cache" / "squad" / "docs")
    parser.add_argument("--data", type=Path, default=REPO / ".." / "shared" / "eval" / "squad-v1.1-dev")
    parser.add_argument("--questions", type=int, default=300)
    args = parser.parse_args()
    if not (args.data / "queries.jsonl").is_file():
        print(f"error: {args.data} has no queries.jsonl; pass --data", file=sys.stderr)
        return 1
    if not (args.index / "CURRENT").is_file():
        print(f"error: no index in {args.index}; run `qa eval --sets squad` first", file=sys.stderr)
        return 1
    questions = [json.loads(line)["text"] for line in open(args.data / "queries.jsonl", encoding="utf-8")]
    questions = questions[::max(1, len(questions) // args.questions)][:args.questions]
    servers = {}
    try:
        for name in ("off", "default"):
            servers[name] = start(args.index, args.docs, name)
        times: dict[str, list[float]] = {name: [] for name in servers}
        with httpx.Client(timeout=30) as client:
            for name, (_, url) in servers.items():  # warm-up
                client.post(url + "/ask", json={"question": "warm up", "top_k": 5})
            for number, question in enumerate(questions):
                order = list(servers) if number % 2 == 0 else list(servers)[::-1]
                for name in order:
                    began = time.perf_counter()
                    response = client.post(servers[name][1] + "/ask", json={"question": question, "top_k": 5})
                    times[name].append((time.perf_counter() - began) * 1000)
                    response.raise_for_status()
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=30)
    for name, values in times.items():
        values.sort()
        print(f"reader {name:>7}: p50 {statistics.median(values):.1f} ms, p95 {values[int(0.95 * len(values))]:.1f} ms "
              f"over {len(values)} questions")
    ratio = statistics.median(times["default"]) / statistics.median(times["off"])
    print(f"reader on / off p50: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
