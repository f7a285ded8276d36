"""The index follows the articles folder: a sync at start, changes noticed while serving, one builder
at a time; index updates are bounded (queue, bytes, shutdown); the tests' own seed articles are pinned."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from qa import changes, store
from qa.api import create_app
from qa.assistant import Assistant
from qa.embedding import FakeEmbedder

from .conftest import REPO, SEEDS, make_settings, seed_problems
from .test_changes import ServerProcess, _agreement, _wait_job, article_text, folder_ids, index_ids
from .test_reliability import qa_env, report, tree_digest

BASE_URL = "http://localhost"  # a name the server answers to (see qa/security.py)


def poll(check: Callable[[], bool], timeout: float = 30.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} did not hold within {timeout:.0f} s"
        time.sleep(0.05)  # polling interval


def served(client: Any) -> list[str]:
    return sorted(doc["doc_id"] for doc in client.get("/documents").json())


def settled(client: TestClient) -> bool:
    health = client.get("/health").json()
    return bool(health["loaded"] and not health["building"])


@pytest.fixture
def embedded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the articles every build embeds, in order."""
    import qa.indexing

    seen: list[str] = []
    original = qa.indexing.embed_documents

    def spy(docs: Sequence[Any], *args: Any, **kwargs: Any) -> Any:
        seen.extend(doc.doc_id for doc in docs)
        return original(docs, *args, **kwargs)

    monkeypatch.setattr(qa.indexing, "embed_documents", spy)
    return seen


# --- the tests' seed articles ----------------------------------------------------------------------


def test_tests_use_a_pinned_copy_of_the_five_seeds(docs_dir: Path, tmp_path: Path) -> None:
    assert SEEDS != REPO / "seeds" and seed_problems(SEEDS) == []
    assert seed_problems(docs_dir) == []  # what the fixtures hand a test
    user = tmp_path / "user-seeds"
    user.mkdir()
    for path in SEEDS.iterdir():
        (user / path.name).write_bytes(path.read_bytes())
    (user / "my-article.txt").write_text("Something a user added.")
    (user / "003_a706da511b167a58.txt").write_text("Edited by hand.")
    assert seed_problems(user) == ["003_a706da511b167a58.txt has changed", "my-article.txt is not a pinned seed"]


# --- sync at start ------------------------------------------------------------------------------------


def test_the_server_syncs_with_the_folder_at_start_embedding_only_what_changed(
        assistant: Assistant, embedded: list[str]) -> None:
    settings = assistant.settings
    docs = settings.docs_dir
    (docs / "004_c96e7aec04f74565.txt").unlink()
    (docs / "new.txt").write_text(article_text(3000, 1))
    changed = docs / "001_75d156586012b08a.txt"
    changed.write_text(changed.read_text() + "\nA closing sentence added later.\n")
    restarted = Assistant(settings)
    restarted.load()  # what `qa serve` does before it serves: the stored version
    assert len(restarted.documents()) == 5
    with TestClient(create_app(restarted, watch=True), base_url=BASE_URL) as client:
        poll(lambda: settled(client), what="the start-up sync")
        assert served(client) == folder_ids(docs) == index_ids(settings.index_dir)
    assert sorted(embedded) == ["001_75d156586012b08a", "new"]


def test_a_server_with_nothing_to_sync_writes_no_version(assistant: Assistant, embedded: list[str]) -> None:
    version = store.current_version(assistant.settings.index_dir)
    with TestClient(create_app(assistant, watch=True), base_url=BASE_URL) as client:
        poll(lambda: settled(client), what="the start-up sync")
        assert client.get("/health").json()["version"] == version
    assert embedded == [] and store.current_version(assistant.settings.index_dir) == version


# --- changes while serving ------------------------------------------------------------------------------


def test_articles_dropped_into_or_deleted_from_the_folder_are_followed(assistant: Assistant) -> None:
    docs = assistant.settings.docs_dir
    with TestClient(create_app(assistant, watch=True), base_url=BASE_URL) as client:
        poll(lambda: settled(client), what="the start-up sync")
        (docs / "dropped.txt").write_text(article_text(3000, 2))
        poll(lambda: "dropped" in served(client), what="the dropped article being served")
        (docs / "002_7e9bf9ad3c619b7e.txt").unlink()
        poll(lambda: "002_7e9bf9ad3c619b7e" not in served(client), what="the deleted article leaving")
        poll(lambda: settled(client), what="the sync")
        assert served(client) == folder_ids(docs) == index_ids(assistant.settings.index_dir)
        hidden = docs / ".half-written.txt"  # hidden files are not articles
        hidden.write_text(article_text(2000, 3))
        time.sleep(1.0)  # long enough for the watcher to have reacted, were it going to
        assert served(client) == folder_ids(docs)


@pytest.fixture
def server(docs_dir: Path, tmp_path: Path) -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    """A real `qa serve` (fake embedder) and the environment a CLI process needs to share its folders."""
    process = ServerProcess(docs_dir, tmp_path / "index", tmp_path / "server.log")
    try:
        with httpx.Client(timeout=30.0) as client:
            process.settled(client)
        yield process, qa_env(docs_dir, tmp_path / "index", QA_READER="off")
    finally:
        process.kill()


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qa.cli", *args], env=env, capture_output=True, text=True, timeout=120)


def test_another_process_qa_add_remove_and_index_are_served(server: tuple[ServerProcess, dict[str, str]],
                                                           tmp_path: Path) -> None:
    process, env = server
    docs, index = Path(env["QA_DOCS_DIR"]), Path(env["QA_INDEX_DIR"])
    article = tmp_path / "elsewhere.txt"
    article.write_text(article_text(3000, 4))
    with httpx.Client(base_url=process.url, timeout=30.0) as client:
        done = cli(env, "add", str(article))
        assert done.returncode == 0, done.stderr
        poll(lambda: "elsewhere" in served(client), what="the CLI's add being served")
        done = cli(env, "remove", "000_53675505a120e109")
        assert done.returncode == 0, done.stderr
        poll(lambda: "000_53675505a120e109" not in served(client), what="the CLI's remove being served")
        done = cli(env, "index", "--full")
        assert done.returncode == 0, done.stderr
        live = store.current_version(index)
        poll(lambda: client.get("/health").json()["version"] == live, what="the CLI's rebuild being served")
        process.settled(client)
        assert not _agreement(client, process.url, docs, index)


def test_two_processes_never_build_at_once_and_nothing_is_lost(server: tuple[ServerProcess, dict[str, str]],
                                                               tmp_path: Path) -> None:
    process, env = server
    docs, index = Path(env["QA_DOCS_DIR"]), Path(env["QA_INDEX_DIR"])
    article = tmp_path / "from-cli.txt"
    article.write_text(article_text(3000, 5))
    before = tree_digest(docs), store.current_version(index)
    with httpx.Client(base_url=process.url, timeout=30.0) as client:
        with store.build_lock(index):  # another build holds the lock: both writers wait their turn
            waiting = subprocess.Popen([sys.executable, "-m", "qa.cli", "add", str(article)], env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            response = client.post("/documents", files=[("files", ("from-api.txt", article_text(3000, 6).encode(),
                                                                   "text/plain"))])
            assert response.status_code == 202
            time.sleep(1.5)  # long enough for either to have started changing things, were it not waiting
            assert waiting.poll() is None and not changes.pending(docs)
            assert (tree_digest(docs), store.current_version(index)) == before
        _, err = waiting.communicate(timeout=120)
        assert waiting.returncode == 0, err
        assert _wait_job(client, process.url, response.json()["job_id"])["status"] == "done"
        poll(lambda: {"from-cli", "from-api"} <= set(served(client)), what="both adds being served")
        process.settled(client)
        assert not _agreement(client, process.url, docs, index)
    Assistant(make_settings(docs, index)).load()  # whole, checksums verified


# --- bounds on index work ------------------------------------------------------------------------------


def test_waiting_updates_are_capped_with_retry_after(assistant: Assistant, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    original = assistant.add

    def slow_add(*args: Any, **kwargs: Any) -> Any:
        release.wait(30)
        return original(*args, **kwargs)

    monkeypatch.setattr(assistant, "add", slow_add)
    app = create_app(assistant)
    jobs = app.state.jobs
    with TestClient(app, base_url=BASE_URL) as client:
        def upload(number: int, size: int = 2000) -> httpx.Response:
            text = article_text(size, 100 + number).encode()
            return client.post("/documents", files=[("files", (f"new-{number}.txt", text, "text/plain"))])

        accepted = [upload(number) for number in range(jobs.max_waiting + 1)]  # one runs, the rest wait
        assert [r.status_code for r in accepted] == [202] * (jobs.max_waiting + 1)
        refused = upload(99)
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"]["code"] == "too_many_updates"
        release.set()
        for response in accepted:
            assert _wait_job(client, "", response.json()["job_id"])["status"] == "done"
        jobs.max_waiting_bytes = 10_000  # bytes waiting: refused once they would pass the limit
        release.clear()
        assert upload(200, 6000).status_code == 202
        assert upload(201, 6000).status_code == 202
        refused = upload(202, 6000)
        assert refused.status_code == 429 and "bytes" in refused.json()["error"]["message"]
        release.set()


class SlowEmbedder(FakeEmbedder):
    """The fake embedder, taking `seconds` per call: a build that runs long enough to be interrupted."""

    def __init__(self, seconds: float) -> None:
        super().__init__(256)
        self.seconds = seconds
        self.started = threading.Event()

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        if len(texts) > 1:
            self.started.set()
            time.sleep(self.seconds)
        return super().embed(texts, progress=progress)


def test_shutdown_cancels_the_running_update_and_keeps_the_previous_version(assistant: Assistant) -> None:
    settings = assistant.settings
    before = tree_digest(settings.docs_dir), store.current_version(settings.index_dir)
    embedder = SlowEmbedder(0.5)
    slow = Assistant(settings, embedder)
    slow.load()
    app = create_app(slow)
    with TestClient(app, base_url=BASE_URL) as client:
        # 27 slices of passages and sentences: some 13 s of embedding if nothing stopped it.
        text = article_text(200_000, 8).encode()
        response = client.post("/documents", files=[("files", ("long.txt", text, "text/plain"))])
        assert response.status_code == 202
        queued = client.post("/documents", files=[("files", ("later.txt", article_text(2000, 9).encode(), "text/plain"))])
        assert embedder.started.wait(30)
        stopping = time.monotonic()
    stopped = time.monotonic() - stopping
    assert stopped < 3.0, f"shutdown took {stopped:.1f} s"
    cancelled, dropped = (app.state.jobs.get(r.json()["job_id"]) for r in (response, queued))
    assert cancelled.status == "failed" and "cancelled" in cancelled.message
    assert dropped.status == "failed" and "shut down" in dropped.message
    assert (tree_digest(settings.docs_dir), store.current_version(settings.index_dir)) == before
    assert not changes.pending(settings.docs_dir)
    fresh = Assistant(settings)
    fresh.load()
    assert [doc.doc_id for doc, _ in fresh.documents()] == folder_ids(settings.docs_dir)


def test_sigterm_stops_a_server_mid_build_within_seconds(server: tuple[ServerProcess, dict[str, str]],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    process, env = server
    docs, index = Path(env["QA_DOCS_DIR"]), Path(env["QA_INDEX_DIR"])
    with httpx.Client(base_url=process.url, timeout=30.0) as client:
        files = [("files", (f"big-{n}.txt", article_text(990_000, 20 + n).encode(), "text/plain")) for n in range(6)]
        response = client.post("/documents", files=files)
        assert response.status_code == 202
        poll(lambda: client.get(f"/jobs/{response.json()['job_id']}").json()["status"] == "running", what="the build")
    seconds = process.stop()
    report(capsys, "sigterm-mid-build", {"stop_seconds": round(seconds, 2)})
    assert seconds < 5, f"the server took {seconds:.1f} s to stop"
    restarted = ServerProcess(docs, index, process.log)
    try:
        with httpx.Client(timeout=30.0) as client:
            restarted.settled(client)
            assert not _agreement(client, restarted.url, docs, index)
    finally:
        restarted.kill()
