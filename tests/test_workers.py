"""`qa serve --workers 2` against a build made by another process (`qa add`), on loopback with the fake model.

Both worker processes must move to the new version (each logs the switch), every answer meanwhile
must come from the old or the new version, never fail, and afterwards every fresh connection (which
the kernel may hand to either worker) answers from the new version and finds the new article.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from .conftest import SEEDS
from .test_concurrency import free_port, server_log_problems
from .test_reliability import qa_env, report

QUESTION = "zorblax lantern festival quintaric boats"
ARTICLE = ("Festival of zorblax lanterns opens on the river\n\n"
           "The zorblax lantern festival opened on Friday with quintaric boats on the river, organisers said. "
           "Thousands watched the quintaric parade as zorblax lanterns lit the water.\n")


def _wait(condition: object, timeout: float, what: str, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout}s:\n{log_path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)


def _switches(log_path: Path, version: str) -> set[int]:
    """The worker processes that have logged serving `version`."""
    text = log_path.read_text(errors="replace")
    pattern = rf"qa\.workers\[(\d+)\]: (?:worker serving|now serving) index version {re.escape(version)}"
    return {int(pid) for pid in re.findall(pattern, text)}


def test_two_workers_follow_a_build_made_by_another_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs, index, log_path = tmp_path / "docs", tmp_path / "index", tmp_path / "server.log"
    shutil.copytree(SEEDS, docs)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = qa_env(docs, index, QA_HOST="127.0.0.1", QA_PORT=str(port))
    with log_path.open("wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "qa.cli", "serve", "--workers", "2"], env=env, stdout=log,
                                  stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        def healthy() -> bool:
            assert server.poll() is None, log_path.read_text(errors="replace")
            try:
                return bool(httpx.get(url + "/health", timeout=2).json().get("loaded"))
            except httpx.HTTPError:
                return False

        _wait(healthy, 120, "the server did not start", log_path)
        old = httpx.get(url + "/health").json()["version"]
        _wait(lambda: len(_switches(log_path, old)) == 2, 60, "two workers did not both load the index", log_path)

        # Questions on fresh connections all through the build: each must be a 200 from a whole version.
        seen: list[tuple[int, str | None]] = []
        stop = threading.Event()

        def ask_all_the_time() -> None:
            while not stop.is_set():
                with httpx.Client(base_url=url, timeout=30) as client:  # a new connection: either worker
                    response = client.post("/ask", json={"question": QUESTION, "top_k": 3})
                seen.append((response.status_code, response.json().get("index_version")))

        asker = threading.Thread(target=ask_all_the_time)
        asker.start()
        try:
            article = tmp_path / "zorblax-festival.txt"
            article.write_text(ARTICLE, encoding="utf-8")
            added = subprocess.run([sys.executable, "-m", "qa.cli", "add", str(article)], env=env, cwd=tmp_path,
                                   capture_output=True, text=True, timeout=120)
            assert added.returncode == 0, added.stderr
            written = (index / "CURRENT").stat().st_mtime  # when the new version went live
            new = (index / "CURRENT").read_text().strip()
            assert new != old
            _wait(lambda: len(_switches(log_path, new)) == 2, 30, "both workers did not switch", log_path)
            lag = time.time() - written  # an upper bound: polled every 50 ms
        finally:
            stop.set()
            asker.join()

        assert seen and all(status == 200 for status, _ in seen), seen
        assert {version for _, version in seen} <= {old, new}
        for _ in range(20):  # the kernel spreads new connections over both workers
            with httpx.Client(base_url=url, timeout=30) as client:
                body = client.post("/ask", json={"question": QUESTION, "top_k": 3}).json()
            assert body["index_version"] == new
            assert body["passages"][0]["doc_id"] == "zorblax-festival"
        # An upload over HTTP: its job is found whichever worker a fresh connection reaches.
        ferry = "Night ferry resumes\n\nThe overnight ferry to the northern islands sails again on Friday.\n"
        with httpx.Client(base_url=url, timeout=30) as client:
            job = client.post("/documents", files={"files": ("ferry.txt", ferry.encode())}).json()
        states = []
        while not states or states[-1] not in ("done", "failed"):
            with httpx.Client(base_url=url, timeout=30) as client:  # a new connection each time
                response = client.get(f"/jobs/{job['job_id']}")
            assert response.status_code == 200, response.text
            states.append(response.json()["status"])
        assert states[-1] == "done", states
        assert not server_log_problems(log_path), server_log_problems(log_path)
        report(capsys, "workers_follow", {"both_switched_after_s": round(lag, 3), "answers_during_build": len(seen)})
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert server.returncode == 0, log_path.read_text(errors="replace")[-3000:]


def test_each_worker_reads_with_its_share_of_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from qa import workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert [workers.reader_share(n) for n in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
