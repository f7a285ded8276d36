"""Server memory and time while one POST adds large articles.

    python bench/upload_memory.py [--files 20] [--size 990000] [--shared-vocabulary] [--timeout 3600]

Starts `qa serve` (the packaged model, unless QA_MODEL says otherwise) over a copy of the seed
articles in a temporary folder, samples the server's resident memory every 0.2 s from /proc,
uploads the made-up articles in one POST and waits for the job to finish. Prints the resident memory
before, the peak during the build (VmHWM), the seconds to the 202 and to the end of the build, and
the passages indexed. Linux only (it reads /proc).
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def news_like(size: int, seed: int, shared: bool = False) -> str:
    """About `size` characters of made-up prose: sentences of 12-30 words, four to six to a paragraph.

    Each article invents its own 30,000 words (20 articles: some 600,000 distinct terms, far more than
    real news has), or with `shared` all draw from one list of 50,000 with Zipf-like frequencies.
    """
    rng = random.Random(seed)
    letters = "etaoinshrdlcumwfgypbvk"
    words_rng = random.Random(0) if shared else rng
    words = ["".join(words_rng.choices(letters, k=words_rng.randint(2, 9))) for _ in range(50_000 if shared else 30_000)]
    # Zipf-like: the word of rank r is drawn in proportion to 1 / r.
    cumulative = list(itertools.accumulate(1 / rank for rank in range(1, len(words) + 1))) if shared else None

    def choose(count: int) -> list[str]:
        return rng.choices(words, cum_weights=cumulative, k=count)
    paragraphs, length = [f"Report number {seed}"], 0
    while length < size:
        sentences = [" ".join(choose(rng.randint(12, 30))).capitalize() + "."
                     for _ in range(rng.randint(4, 6))]
        paragraphs.append(" ".join(sentences))
        length += len(paragraphs[-1]) + 2
    return "\n\n".join(paragraphs)[:size] + "\n"


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in MB."""
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            figures[key] = int(value.split()[0]) // 1024
    return figures


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--size", type=int, default=990_000, help="characters per article")
    parser.add_argument("--shared-vocabulary", action="store_true", help="articles share one Zipf-like vocabulary")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the build")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="qa-upload-memory-"))
    try:
        shutil.copytree(REPO / "tests" / "seeds", root / "docs")
        port = free_port()
        env = {key: value for key, value in os.environ.items() if not key.startswith("QA_") or key == "QA_MODEL"}
        env.update({"QA_DOCS_DIR": str(root / "docs"), "QA_INDEX_DIR": str(root / "index"), "QA_PORT": str(port),
                    "HF_HUB_OFFLINE": "1"})
        log = (root / "server.log").open("wb")
        server = subprocess.Popen([sys.executable, "-m", "qa.cli", "serve"], env=env, stdout=log,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        status = 1
        try:
            status = run(server, url, args)
            return status
        finally:
            server.terminate()
            server.wait(timeout=60)
            log.close()
            if status:
                print((root / "server.log").read_text(errors="replace")[-1500:], end="")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(server: subprocess.Popen[bytes], url: str, args: argparse.Namespace) -> int:
    with httpx.Client(base_url=url, timeout=120.0) as client:
        deadline = time.monotonic() + 600
        while True:
            if server.poll() is not None:
                print(f"the server exited with code {server.returncode}")
                return 1
            try:
                health = client.get("/health").json()
                if health["loaded"] and not health["building"]:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                print("the server did not start in 600 s")
                return 1
            time.sleep(0.5)
        before = memory(server.pid)
        files = [("files", (f"big-{n:02d}.txt", news_like(args.size, n, args.shared_vocabulary).encode(), "text/plain"))
                 for n in range(args.files)]
        samples: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.2):
                try:
                    samples.append(memory(server.pid)["VmRSS"])
                except (OSError, KeyError):
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        response = client.post("/documents", files=files)
        accepted = time.monotonic() - started
        if response.status_code != 202:
            print(f"POST /documents answered {response.status_code}: {response.text[:300]}")
            return 1
        job_id = response.json()["job_id"]

        def poll() -> dict:
            # A kept-alive connection may be closed by the server as the poll reuses it (its keep-alive timer
            # fires late when the build keeps its event loop busy); a poll is safe to send again.
            for attempt in range(5):
                try:
                    return client.get(f"/jobs/{job_id}").json()
                except httpx.TransportError:
                    if attempt == 4:
                        raise
                    time.sleep(0.5)
            raise AssertionError("unreachable")

        while (job := poll())["status"] not in ("done", "failed"):
            if time.monotonic() - started > args.timeout:
                break
            time.sleep(1.0)
        built = time.monotonic() - started
        stop.set()
        sampler.join()
        after = memory(server.pid)
        health = client.get("/health").json()
    vocabulary = "one shared vocabulary" if args.shared_vocabulary else "each its own vocabulary"
    print(f"articles: {args.files} x {args.size:,} characters, {vocabulary}; job {job['status']}"
          f"{': ' + job['message'] if job.get('message') else ''}")
    print(f"202 after {accepted:.2f} s; job ended after {built:.1f} s; index: {health['documents']} articles, "
          f"{health['passages']} passages")
    print(f"server RSS: {before['VmRSS']} MB before, peak {after['VmHWM']} MB (sampled max {max(samples or [0])} MB), "
          f"{after['VmRSS']} MB after")
    return 0 if job["status"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
