"""`qa bench --workers 1,2`: requests per second of `qa serve --workers N` with concurrent loopback clients.

Each level starts a real server on the same built index, warms every worker, then sends distinct
questions (none is an answer-cache hit) from `--clients` keep-alive connections and reports requests
per second, latency percentiles, and the CPU time each worker process spent. With two workers or more,
it then measures the version switch: `qa add` in another process writes a new version while the
clients keep asking, and the switch lag is the time from CURRENT naming it to the last worker logging
that it serves it. The server runs on a copy of the articles folder, so the folder given is not touched.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Sequence

from .. import documents
from ..benchmark import REPO, _clients, cores, free_port, git_commit, load_average, percentile, proc_cpu_seconds


def questions_from(docs_dir: Path, count: int, seed: int = 7) -> list[str]:
    """Distinct questions made of words from the articles, so every request is worked out anew."""
    words: list[str] = []
    for doc in documents.load_all(documents.article_files(docs_dir)):
        words.extend(re.findall(r"[A-Za-z]{4,}", doc.text))
    rng = random.Random(seed)
    made: dict[str, None] = {}
    while len(made) < count:
        made["What about " + " ".join(rng.sample(words, rng.randint(3, 8))) + "?"] = None
    return list(made)


def workers_of(log_path: Path) -> list[int]:
    """The worker processes' ids, as each logged it on loading the index (none for a single process)."""
    return sorted({int(pid) for pid in re.findall(r"qa\.workers\[(\d+)\]: worker serving", log_path.read_text())})


def start(workers: int, docs_dir: Path, index_dir: Path, log_path: Path, timeout: float = 300) -> tuple[subprocess.Popen[bytes], int]:
    """`qa serve --workers N` on a free port, returned once every worker has loaded the index."""
    port = free_port()
    command = [sys.executable, "-m", "qa.cli", "serve", "--docs", str(docs_dir), "--index", str(index_dir),
               "--port", str(port), "--workers", str(workers)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while log_path.read_text(errors="replace").count("Application startup complete") < workers:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the server did not start; see {log_path}")
        time.sleep(0.1)
    return process, port


SWITCH_ARTICLE = ("Night ferry resumes\n\nThe overnight ferry to the northern islands sails again on Friday, "
                  "the harbour office said.\n")


def _served_at(log_path: Path, pid: int, version: str) -> float | None:
    """When (epoch seconds) a worker logged serving this version, from its log line's time stamp."""
    pattern = rf"^(\S+ \S+) INFO qa\.workers\[{pid}\]: (?:worker serving|now serving) index version {re.escape(version)}$"
    found = re.search(pattern, log_path.read_text(errors="replace"), re.MULTILINE)
    return None if found is None else datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def switch_lag(args: argparse.Namespace, port: int, pids: list[int], log_path: Path, questions: list[str],
               timeout: float = 120) -> dict[str, float]:
    """A version written by `qa add` in another process while the clients ask: seconds until every worker serves it."""
    failed: list[BaseException] = []

    def ask() -> None:
        try:
            asyncio.run(_clients(port, questions, args.clients))
        except BaseException as exc:  # a non-200 answer, or a dropped connection: reported below
            failed.append(exc)

    load = threading.Thread(target=ask)
    article = args.cache / "ferry-resumes.txt"
    article.write_text(SWITCH_ARTICLE, encoding="utf-8")
    cli = [sys.executable, "-m", "qa.cli"]
    where = ["--docs", str(args.served_docs), "--index", str(args.index)]
    load.start()
    try:
        subprocess.run([*cli, "add", *where, str(article)], cwd=REPO, check=True, capture_output=True, timeout=300)
        current = args.index / "CURRENT"
        written, version = current.stat().st_mtime, current.read_text().strip()
        asked_during = load.is_alive()
        deadline = time.monotonic() + timeout
        while True:
            seen = [_served_at(log_path, pid, version) for pid in pids]
            if all(at is not None for at in seen):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"not every worker served {version} within {timeout:.0f} s; see {log_path}")
            time.sleep(0.05)
    finally:
        load.join()
    if failed:
        raise RuntimeError(f"a question failed while the version switched: {failed[0]}")
    subprocess.run([*cli, "remove", *where, article.stem], cwd=REPO, check=True, capture_output=True, timeout=300)
    return {"switch_s": max(at for at in seen if at is not None) - written, "switch_under_load": asked_during}


def measure(workers: int, args: argparse.Namespace, questions: list[str]) -> dict[str, float]:
    log_path = args.cache / f"serve-{workers}.log"
    process, port = start(workers, args.served_docs, args.index, log_path)
    try:
        asyncio.run(_clients(port, questions[:args.clients * 4], args.clients))  # warm every connection's worker
        pids = workers_of(args.cache / f"serve-{workers}.log") or [process.pid]
        cpu_before = {pid: proc_cpu_seconds(pid) for pid in pids}
        supervisor_before = proc_cpu_seconds(process.pid) if process.pid not in pids else 0.0
        clients_before = time.process_time()
        latencies, wall = asyncio.run(_clients(port, questions[args.clients * 4:], args.clients))
        clients_cpu = time.process_time() - clients_before
        cpu = [proc_cpu_seconds(pid) - cpu_before[pid] for pid in pids]
        supervisor = proc_cpu_seconds(process.pid) - supervisor_before if process.pid not in pids else 0.0
        switch = switch_lag(args, port, pids, log_path, questions[:args.clients * 40]) if workers > 1 else {}
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return {"workers": workers, "requests": len(latencies), "rps": len(latencies) / wall,
            "p50_ms": percentile(latencies, 50) * 1000, "p95_ms": percentile(latencies, 95) * 1000,
            "cpu_ms_per_request": sum(cpu) / len(latencies) * 1000,
            "cpu_share": " / ".join(f"{c / sum(cpu):.0%}" for c in cpu) if sum(cpu) else "-",
            # Cores kept busy during the timed run: by the server (workers and any supervisor) and by the clients
            # (this process). On a machine where they share the cores, their sum says how much room is left.
            "server_cores": (sum(cpu) + supervisor) / wall, "client_cores": clients_cpu / wall, **switch}


def render(rows: list[dict[str, float]], args: argparse.Namespace) -> str:
    lines = [f"`qa bench --workers {args.workers}` at {git_commit()}, {cores()} cores, load average {load_average()}, "
             f"{args.clients} keep-alive clients on loopback, {rows[0]['requests']} distinct questions per level:", "",
             "| workers | requests/s | p50 ms | p95 ms | CPU ms per request | CPU share per worker | "
             "server cores busy | client cores busy | version switch s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['workers']} | {row['rps']:.1f} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | "
                     f"{row['cpu_ms_per_request']:.2f} | {row['cpu_share']} | {row['server_cores']:.2f} | "
                     f"{row['client_cores']:.2f} | {_switch(row)} |")
    return "\n".join(lines)


def _switch(row: dict[str, float]) -> str:
    if "switch_s" not in row:
        return "-"
    return f"{row['switch_s']:.2f}" + ("" if row["switch_under_load"] else " (after the clients stopped)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qa bench --workers", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--workers", default="1,2", help="worker counts to compare, comma-separated (default 1,2)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent keep-alive connections (default 8)")
    parser.add_argument("--requests", type=int, default=800, help="timed requests per level (default 800)")
    parser.add_argument("--docs", type=Path, default=REPO / "seeds", help="articles folder (default seeds/)")
    parser.add_argument("--index", type=Path, default=REPO / "bench/.cache/workers/index", help="index folder")
    parser.add_argument("--cache", type=Path, default=REPO / "bench/.cache/workers", help="logs")
    args = parser.parse_args(argv)
    levels = [int(n) for n in args.workers.split(",")]
    args.served_docs = args.cache / "docs"  # a copy: the switch measurement adds and removes an article
    shutil.rmtree(args.served_docs, ignore_errors=True)
    shutil.copytree(args.docs, args.served_docs)
    questions = questions_from(args.docs, args.requests + args.clients * 4)
    rows = [measure(n, args, questions) for n in levels]
    print(render(rows, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
