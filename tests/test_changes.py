"""An add or remove is one commit: the articles folder and the index change together or not at all.

The kill test runs the real server (`qa serve`, fake embedder) and kills it with SIGKILL at random
moments of adds and removes of one article; after each restart the folder, the index on disk and
the API must list the same articles, and the same article must be addable or removable again.
Set QA_CRASH_SEED to replay a run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from qa import changes, documents, store
from qa.assistant import Assistant, Upload
from qa.config import Settings
from qa.errors import IndexBusy

from .browser_support import free_port
from .test_reliability import qa_env, report, tree_digest

TRIALS = 24
ARTICLE = "mid"


def article_text(size: int, seed: int = 7) -> str:
    """A made-up article of about `size` characters: paragraphs of sentences of invented words."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(rng.randint(1, 4)))
             for _ in range(3000)]
    paragraphs, length = ["A made up article for the crash tests"], 0
    while length < size:
        sentences = [" ".join(rng.choices(words, k=rng.randint(6, 18))).capitalize() + "." for _ in range(4)]
        paragraphs.append(" ".join(sentences))
        length += len(paragraphs[-1]) + 2
    return "\n\n".join(paragraphs) + "\n"


def folder_ids(docs: Path) -> list[str]:
    return [path.stem for path in documents.article_files(docs)]


def index_ids(index: Path) -> list[str]:
    return sorted(store.content_hashes(index))


def leftovers(docs: Path, index: Path) -> list[str]:
    """Staging files a finished change or build must not leave behind."""
    return ([p.name for p in docs.iterdir() if p.name.startswith(".qa-")]
            + [p.name for p in index.iterdir() if p.name.startswith(".tmp-") or p.name.startswith(f".{store.CURRENT}.")])


# --- the journal, without a server ---------------------------------------------------------------


def test_a_failed_add_or_remove_leaves_folder_and_index_as_they_were(assistant: Assistant,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    settings = assistant.settings
    before = tree_digest(settings.docs_dir), store.current_version(settings.index_dir)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the build broke")

    monkeypatch.setattr("qa.indexing.embed_documents", broken)
    with pytest.raises(RuntimeError):
        assistant.add([Upload("new.txt", article_text(3000).encode())])
    assert (tree_digest(settings.docs_dir), store.current_version(settings.index_dir)) == before
    monkeypatch.setattr("qa.store.write", broken)
    with pytest.raises(RuntimeError):
        assistant.remove("001_75d156586012b08a")
    assert (tree_digest(settings.docs_dir), store.current_version(settings.index_dir)) == before
    assert not changes.pending(settings.docs_dir)


@pytest.mark.parametrize("stage", ["staged only", "journal written", "half moved", "all moved"])
def test_recover_finishes_an_interrupted_change(assistant: Assistant, stage: str) -> None:
    """Each state a crash can leave an add of two files and a remove of one in: the next build finishes it."""
    settings = assistant.settings
    docs = settings.docs_dir
    staged = {".qa-new-t-a.txt": article_text(2000, 1), ".qa-new-t-b.txt": article_text(2000, 2)}
    for name, text in staged.items():
        (docs / name).write_text(text)
    journal = {"add": [[".qa-new-t-a.txt", "a.txt"], [".qa-new-t-b.txt", "b.txt"]],
               "remove": [["002_7e9bf9ad3c619b7e.txt", ".qa-old-t-002_7e9bf9ad3c619b7e.txt"]]}
    if stage != "staged only":
        (docs / changes.JOURNAL).write_text(json.dumps(journal))
    if stage in ("half moved", "all moved"):
        os.replace(docs / "002_7e9bf9ad3c619b7e.txt", docs / ".qa-old-t-002_7e9bf9ad3c619b7e.txt")
        os.replace(docs / ".qa-new-t-a.txt", docs / "a.txt")
    if stage == "all moved":
        os.replace(docs / ".qa-new-t-b.txt", docs / "b.txt")
    report_ = Assistant(settings).build()
    expected = {"000_53675505a120e109", "001_75d156586012b08a", "003_a706da511b167a58", "004_c96e7aec04f74565"}
    if stage != "staged only":  # without a journal the change never began: its staged files are dropped
        expected |= {"a", "b"}
    else:
        expected |= {"002_7e9bf9ad3c619b7e"}
    assert set(folder_ids(docs)) == expected == set(index_ids(settings.index_dir))
    assert report_.version is not None or stage == "staged only"
    assert not leftovers(docs, settings.index_dir) and not changes.pending(docs)


def test_a_torn_journal_means_the_change_never_began(assistant: Assistant) -> None:
    docs = assistant.settings.docs_dir
    (docs / ".qa-new-t-a.txt").write_text(article_text(2000))
    (docs / changes.JOURNAL).write_text('{"add": [[".qa-new-t-a.txt", "a.t')
    assert Assistant(assistant.settings).build().version is None
    assert "a" not in folder_ids(docs) and not leftovers(docs, assistant.settings.index_dir)


def test_a_journal_never_reaches_outside_the_folder(assistant: Assistant, tmp_path: Path) -> None:
    docs = assistant.settings.docs_dir
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    (docs / changes.JOURNAL).write_text(json.dumps({"add": [], "remove": [["../outside.txt", ".qa-old-x"]]}))
    Assistant(assistant.settings).build()
    assert outside.read_text() == "keep me"


def test_a_build_waits_for_the_lock_then_gives_up(settings: Settings) -> None:
    helper = Assistant(settings)
    helper.lock_wait = 0.3
    with store.build_lock(settings.index_dir):
        started = time.monotonic()
        with pytest.raises(IndexBusy):
            helper.build()
        assert 0.25 < time.monotonic() - started < 5
        with pytest.raises(IndexBusy):
            helper.add([Upload("new.txt", article_text(2000).encode())])
    assert "new" not in folder_ids(settings.docs_dir)
    assert helper.build().documents == 5


# --- kill -9 during adds and removes of a real server ----------------------------------------------


class ServerProcess:
    """`qa serve` with the fake embedder on a free port, over the given folders."""

    def __init__(self, docs: Path, index: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = qa_env(docs, index, QA_PORT=str(self.port), QA_READER="off", PYTHONUNBUFFERED="1")
        self.log = log
        self._out = log.open("ab")
        self.process = subprocess.Popen([sys.executable, "-m", "qa.cli", "serve"], env=env, stdout=self._out,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def settled(self, client: httpx.Client, timeout: float = 60.0) -> dict[str, Any]:
        """/health once an index is loaded and no update is queued or running (the start-up sync included)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the server exited with {self.process.returncode}:\n{self.tail()}"
            try:
                health = client.get(self.url + "/health").json()
                if health.get("loaded") and not health.get("building"):
                    return dict(health)
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # polling interval
        raise AssertionError(f"the server did not settle in {timeout:.0f} s:\n{self.tail()}")

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self._out.close()

    def stop(self) -> float:
        """SIGTERM; returns the seconds the server took to exit."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        finally:
            self._out.close()
        return time.monotonic() - started

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture
def server_folders(docs_dir: Path, tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    yield docs_dir, tmp_path / "index", tmp_path / "server.log"


def _change(client: httpx.Client, url: str, present: bool, text: bytes) -> httpx.Response:
    """Remove the article if it is present, else add it; returns the 202 (or the refusal)."""
    if present:
        return client.delete(f"{url}/documents/{ARTICLE}")
    return client.post(f"{url}/documents", files=[("files", (f"{ARTICLE}.txt", text, "text/plain"))])


def _wait_job(client: httpx.Client, url: str, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"{url}/jobs/{job_id}").json()
        if job["status"] in ("done", "failed"):
            return dict(job)
        time.sleep(0.02)  # polling interval
    raise AssertionError(f"job {job_id} did not finish in {timeout:.0f} s")


def _agreement(client: httpx.Client, url: str, docs: Path, index: Path) -> list[str]:
    """How the folder, the index on disk and the API disagree (an empty list when they agree)."""
    problems = []
    in_folder, on_disk = folder_ids(docs), index_ids(index)
    served = sorted(doc["doc_id"] for doc in client.get(f"{url}/documents").json())
    if not in_folder == on_disk == served:
        problems.append(f"folder {in_folder} / index {on_disk} / API {served}")
    if leftovers(docs, index):
        problems.append(f"left behind: {leftovers(docs, index)}")
    if changes.pending(docs):
        problems.append("the change journal is still there")
    return problems


def test_kill_9_during_adds_and_removes_leaves_folder_index_and_api_agreeing(
        server_folders: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    docs, index, log = server_folders
    text = article_text(250_000).encode()
    seed = int(os.environ.get("QA_CRASH_SEED") or time.time_ns() % 1_000_000)
    rng = random.Random(seed)
    problems: list[str] = []
    outcomes = {"add": 0, "remove": 0, "landed": 0, "not_landed": 0, "journal_left": 0, "staging_left": 0}
    with httpx.Client(timeout=30.0) as client:
        # One add and one remove without a kill: how long each takes, from the request to its job's end.
        server = ServerProcess(docs, index, log)
        try:
            server.settled(client)
            durations = []
            for present in (False, True):
                started = time.monotonic()
                response = _change(client, server.url, present, text)
                assert response.status_code == 202, response.text
                assert _wait_job(client, server.url, response.json()["job_id"])["status"] == "done"
                durations.append(time.monotonic() - started)
        finally:
            server.kill()
        # Stratified: one uniform moment in each of TRIALS slices of the slower change (and a little past it).
        longest = max(durations) * 1.1
        delays = [longest * (slot + rng.random()) / TRIALS for slot in range(TRIALS)]
        rng.shuffle(delays)
        for trial, delay in enumerate(delays):
            server = ServerProcess(docs, index, log)
            try:
                server.settled(client)
                present = trial % 2 == 1  # adds and removes take turns
                if (ARTICLE in folder_ids(docs)) != present:  # set the stage, without a kill
                    response = _change(client, server.url, not present, text)
                    assert _wait_job(client, server.url, response.json()["job_id"])["status"] == "done"
                outcomes["remove" if present else "add"] += 1
                response = _change(client, server.url, present, text)
                assert response.status_code == 202, response.text
                time.sleep(delay)
            finally:
                server.kill()
            # What the kill interrupted: a change whose journal was written, a version being written.
            outcomes["journal_left"] += changes.pending(docs)
            outcomes["staging_left"] += any(p.name.startswith(".tmp-") for p in index.iterdir())
            server = ServerProcess(docs, index, log)
            try:
                server.settled(client)
                found = _agreement(client, server.url, docs, index)
                now = ARTICLE in folder_ids(docs)
                outcomes["landed" if now != present else "not_landed"] += 1
                # The same article can be changed again: added back if it is gone, removed if it is there.
                response = _change(client, server.url, now, text)
                if response.status_code != 202:
                    found.append(f"changing it again: {response.status_code} {response.text[:200]}")
                else:
                    job = _wait_job(client, server.url, response.json()["job_id"])
                    if job["status"] != "done":
                        found.append(f"changing it again failed: {job['message']}")
                    elif (ARTICLE in folder_ids(docs)) == now:
                        found.append("changing it again did nothing")
                    found += _agreement(client, server.url, docs, index)
                problems += [f"trial {trial} ({'remove' if present else 'add'}, kill at {delay:.3f} s): {p}"
                             for p in found]
            finally:
                server.kill()
    figures = {"seed": seed, "trials": TRIALS, **outcomes, "change_seconds": [round(d, 2) for d in durations],
               "problems": len(problems)}
    report(capsys, "kill-during-changes", figures)
    assert not problems, f"seed {seed}:\n" + "\n".join(problems)
