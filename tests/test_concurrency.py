"""Questions under load while articles are added and removed, against a real server on loopback.

Every response must be a 200 carrying the index version it was answered from, and its passages
must be consistent with that version: an article appears only in versions that hold it, and a
version that holds a freshly added article finds it for its distinctive words. No request may be
dropped while a new version is swapped in.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from .conftest import SEEDS
from .test_reliability import qa_env, report

SERVER_LOG_PROBLEMS = ("Traceback (most recent call last)", " ERROR ", "ERROR:", "Exception in ASGI application", '" 500 ')


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_server(docs: Path, index: Path, log_path: Path, startup: float = 120) -> Iterator[str]:
    """`qa serve` in its own process on a free loopback port, with the fake model; yields its base URL."""
    port = free_port()
    env = qa_env(docs, index, QA_HOST="127.0.0.1", QA_PORT=str(port))
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "qa.cli", "serve"], env=env, stdout=log,
                                   stderr=subprocess.STDOUT, cwd=docs.parent)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + startup
            while True:
                if process.poll() is not None:
                    raise AssertionError(f"the server exited with {process.returncode}:\n{log_path.read_text()[-2000:]}")
                try:
                    if httpx.get(url + "/health", timeout=2).json().get("loaded"):
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"the server did not start in {startup}s:\n{log_path.read_text()[-2000:]}")
                time.sleep(0.1)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def server_log_problems(log_path: Path) -> list[str]:
    return [line for line in log_path.read_text(errors="replace").splitlines()
            if any(marker in line for marker in SERVER_LOG_PROBLEMS)]


# --- the test -----------------------------------------------------------------------------------

CYCLES = 4
ASKERS = 8
REMOVED_SEED = "002_7e9bf9ad3c619b7e"
REMOVED_SEED_QUESTION = "Hong Kong Science Park new branch Shenzhen 40 projects"


def new_article(cycle: int) -> tuple[str, str, str]:
    """An article with two words found nowhere else, and a question made of them."""
    first, second = f"zorblax{cycle}q", f"quintaric{cycle}v"
    text = (f"Festival of {first} lanterns opens on the river\n\n"
            f"The {first} lantern festival opened on Friday with {second} boats on the river, organisers said. "
            f"Thousands watched the {second} parade as {first} lanterns lit the water.\n\n"
            f"Organisers expect the {first} festival to return next year with more {second} boats.\n")
    return f"festival_{cycle}", text, f"{first} {second}"


@dataclass
class Observation:
    started: float
    ended: float
    question: str
    status: int | None
    version: str | None = None
    doc_ids: list[str] = field(default_factory=list)
    error: str | None = None


def ask_forever(url: str, questions: list[str], stop: threading.Event, seen: list[Observation], seed: int) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=60) as client:
        while not stop.is_set():
            question = rng.choice(questions)
            mode = rng.choice(["hybrid", "lexical", "dense"])
            started = time.monotonic()
            try:
                if rng.random() < 0.8:
                    response = client.post("/ask", json={"question": question, "top_k": 5, "mode": mode})
                else:
                    response = client.get("/ask", params={"q": question, "top_k": 5, "mode": mode})
                body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
                seen.append(Observation(started, time.monotonic(), question, response.status_code, body.get("index_version"),
                                        [p["doc_id"] for p in body.get("passages", [])],
                                        None if response.status_code == 200 else response.text[:300]))
            except Exception as exc:  # a dropped connection or a timeout is a failure too
                seen.append(Observation(started, time.monotonic(), question, None, error=f"{type(exc).__name__}: {exc}"))


def wait_for_job(client: httpx.Client, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def test_questions_during_adds_and_removes_come_from_one_version(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(SEEDS, docs)
    log_path = tmp_path / "server.log"
    articles = [new_article(cycle) for cycle in range(CYCLES)]
    removed_seed_bytes = (docs / f"{REMOVED_SEED}.txt").read_bytes()
    questions = [q for _, _, q in articles] + [REMOVED_SEED_QUESTION, "Hetao cooperation zone total area",
                                               "Corerain chips", "festival lanterns river boats"]
    with running_server(docs, tmp_path / "index", log_path) as url, httpx.Client(base_url=url, timeout=60) as admin:
        base = admin.get("/health").json()["version"]
        base_docs = {d["doc_id"] for d in admin.get("/documents").json()}
        # Each version and the articles it holds, in the order the updates made them.
        versions: dict[str, set[str]] = {base: set(base_docs)}
        swaps: list[float] = []
        windows: list[tuple[float, float]] = []  # from each update's request to its job seen done: the swap is inside
        seen: list[Observation] = []
        stop = threading.Event()
        askers = [threading.Thread(target=ask_forever, args=(url, questions, stop, seen, n), daemon=True)
                  for n in range(ASKERS)]
        for thread in askers:
            thread.start()
        current = set(base_docs)
        try:
            time.sleep(0.5)

            def update(send: Any, change: set[str], add: bool) -> None:
                nonlocal current
                submitted = time.monotonic()
                response = send()
                assert response.status_code == 202, response.text
                job = wait_for_job(admin, response.json()["job_id"])
                assert job["status"] == "done", job
                swaps.append(time.monotonic())
                windows.append((submitted, swaps[-1]))
                current = current | change if add else current - change
                versions[job["index_version"]] = set(current)
                time.sleep(0.3)

            for cycle, (doc_id, text, _) in enumerate(articles):
                update(lambda: admin.post("/documents", files=[("files", (f"{doc_id}.txt", text.encode(), "text/plain"))]),
                       {doc_id}, True)
                if cycle == 1:
                    update(lambda: admin.delete(f"/documents/{REMOVED_SEED}"), {REMOVED_SEED}, False)
                if cycle == 2:
                    update(lambda: admin.post("/documents", files=[("files", (f"{REMOVED_SEED}.txt", removed_seed_bytes,
                                                                              "text/plain"))]), {REMOVED_SEED}, True)
                if cycle % 2:
                    update(lambda: admin.delete(f"/documents/{doc_id}"), {doc_id}, False)
            time.sleep(0.5)
        finally:
            stop.set()
            for thread in askers:
                thread.join(timeout=60)
        final_health = admin.get("/health").json()

    problems: list[str] = []
    order = sorted(versions)  # version names start with their UTC build time
    assert order[0] == base and final_health["version"] == order[-1]
    by_question = {q: doc_id for doc_id, _, q in articles}
    by_question[REMOVED_SEED_QUESTION] = REMOVED_SEED
    for obs in seen:
        where = f"{obs.question!r} at +{obs.started - swaps[0] if swaps else 0:.2f}s"
        if obs.status != 200:
            problems.append(f"{where}: status {obs.status}: {obs.error}")
            continue
        if obs.version not in versions:
            problems.append(f"{where}: unknown index_version {obs.version!r}")
            continue
        held = versions[obs.version]
        strays = set(obs.doc_ids) - held
        if strays:
            problems.append(f"{where}: passages from {sorted(strays)}, which version {obs.version} does not hold")
        target = by_question.get(obs.question)
        if target in held and (not obs.doc_ids or obs.doc_ids[0] != target):
            problems.append(f"{where}: version {obs.version} holds {target} but the answer ranks {obs.doc_ids[:2]} first")
    during_updates = sum(1 for obs in seen if any(obs.started <= end and obs.ended >= start for start, end in windows))
    latencies = sorted(obs.ended - obs.started for obs in seen)
    log_problems = server_log_problems(log_path)
    figures = {"requests": len(seen), "errors": sum(obs.status != 200 for obs in seen), "versions": len(versions),
               "swaps": len(swaps), "requests_during_updates": during_updates,
               "responses_per_version": [sum(o.version == v for o in seen) for v in order],
               "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1) if latencies else None,
               "max_ms": round(latencies[-1] * 1000, 1) if latencies else None,
               "problems": len(problems), "server_log_problems": len(log_problems)}
    report(capsys, "concurrency", figures)
    assert not problems, f"{len(problems)} of {len(seen)} responses were wrong:\n" + "\n".join(problems[:30])
    assert not log_problems, "\n".join(log_problems[:30])
    assert len(seen) > 200 and len(swaps) == len(versions) - 1 == CYCLES + CYCLES // 2 + 2
    # Every version but the last lived long enough to answer, so mixes would have had a chance to show.
    assert sum(1 for count in figures["responses_per_version"] if count) >= len(order) - 1
