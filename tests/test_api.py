"""Every endpoint and every error of the HTTP API, in process, with the fake embedder."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from fastapi.testclient import TestClient

from qa.api import create_app
from qa.assistant import Assistant
from qa.config import Settings

from .test_index import NEW_ARTICLE, folder_state

PASSAGE_FIELDS = {"rank", "text", "score", "doc_id", "title", "source", "published", "url", "start", "end", "scores"}


@pytest.fixture
def client(assistant: Assistant) -> Iterator[TestClient]:
    with TestClient(create_app(assistant)) as test_client:
        yield test_client


def wait_for_job(client: TestClient, job_id: str) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.02)
    raise AssertionError("job did not finish")


def assert_error(response, status: int, code: str | None = None, contains: str = "") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    if code:
        assert body["error"]["code"] == code
    assert contains.lower() in body["error"]["message"].lower()


def test_ask_post_shape_and_offsets(client: TestClient) -> None:
    response = client.post("/ask", json={"question": "total area of the Hetao cooperation zone square kilometers", "top_k": 3})
    assert response.status_code == 200
    body = response.json()
    assert set(body) >= {"question", "answer", "passages", "took_ms"}
    assert 1 <= len(body["passages"]) <= 3
    assert [p["rank"] for p in body["passages"]] == list(range(1, len(body["passages"]) + 1))
    for passage in body["passages"]:
        assert PASSAGE_FIELDS <= set(passage)
        assert set(passage["scores"]) == {"dense", "lexical", "fused", "sentence", "article", "coverage"}
        text = client.get(f"/documents/{passage['doc_id']}").json()["text"]
        assert text[passage["start"]:passage["end"]] == passage["text"]
    answer = body["answer"]
    if answer is not None:
        cited = body["passages"][answer["passage"] - 1]  # counted from 1, like rank
        assert cited["rank"] == answer["passage"]
        assert cited["start"] <= answer["start"] < answer["end"] <= cited["end"]
        text = client.get(f"/documents/{cited['doc_id']}").json()["text"]
        assert text[answer["start"]:answer["end"]] == answer["text"]


def test_ask_get_matches_post(client: TestClient) -> None:
    post = client.post("/ask", json={"question": "Corerain chips", "top_k": 2}).json()
    get = client.get("/ask", params={"q": "Corerain chips", "top_k": 2}).json()
    assert [p["doc_id"] for p in get["passages"]] == [p["doc_id"] for p in post["passages"]]


@pytest.mark.parametrize(
    "body",
    [{"question": ""}, {"question": "   "}, {"question": "x" * 5000}, {"question": "ok", "top_k": 0},
     {"question": "ok", "top_k": -1}, {"question": "ok", "top_k": 10**9}, {"question": "ok", "top_k": "five"},
     {"question": 42}, {"question": None}, {}, {"question": "ok", "unknown": 1}, [], "text"],
)
def test_ask_rejects_bad_bodies(client: TestClient, body: object) -> None:
    response = client.post("/ask", json=body)
    assert 400 <= response.status_code < 500
    assert_error(response, response.status_code)


def test_ask_blank_and_overlong_questions_say_why(client: TestClient, assistant: Assistant) -> None:
    assert_error(client.post("/ask", json={"question": " \n\t "}), 422, "bad_question", "empty")
    long_question = "word " * (assistant.settings.max_question_chars // 5 + 10)
    assert_error(client.post("/ask", json={"question": long_question[:3999]}), 422, "bad_question", "limit")


def test_malformed_and_oversized_json(client: TestClient) -> None:
    response = client.post("/ask", content=b"{bad json", headers={"content-type": "application/json"})
    assert_error(response, 422, "invalid_request")
    response = client.post("/ask", content=b'{"question": "' + b"a" * 100_000 + b'"}',
                           headers={"content-type": "application/json"})
    assert_error(response, 413, "too_large")


def test_ask_get_validation(client: TestClient) -> None:
    assert_error(client.get("/ask"), 422)
    assert_error(client.get("/ask", params={"q": "x", "top_k": "five"}), 422)
    assert_error(client.get("/ask", params={"q": "x", "top_k": 51}), 422)


def test_no_index_gives_503(tmp_path: Path, settings: Settings) -> None:
    with TestClient(create_app(Assistant(settings))) as empty:
        assert_error(empty.post("/ask", json={"question": "anything"}), 503, "no_index", "qa index")
        assert_error(empty.get("/documents"), 503)
        assert empty.get("/health").json()["loaded"] is False


def test_health_and_documents(client: TestClient) -> None:
    health = client.get("/health").json()
    assert health["loaded"] and health["documents"] == 5 and health["passages"] > 5
    assert health["model"] == "fake-256" and health["version"]
    listing = client.get("/documents").json()
    assert [d["doc_id"] for d in listing] == sorted(d["doc_id"] for d in listing)
    first = next(d for d in listing if d["doc_id"] == "001_75d156586012b08a")
    assert first["title"] == "Shenzhen and Hong Kong collaborate to build a world-class research hub"
    assert first["source"] == "PRNewswire" and first["published"] == "2023-09-01" and first["passages"] > 0
    full = client.get("/documents/001_75d156586012b08a").json()
    assert "3.89 square kilometers" in full["text"]
    assert_error(client.get("/documents/nope"), 404, "not_found")


def test_upload_then_ask_then_delete(client: TestClient, assistant: Assistant) -> None:
    before = client.get("/health").json()["version"]
    response = client.post("/documents", files=[("files", ("lighthouse.txt", NEW_ARTICLE.encode(), "text/plain"))])
    assert response.status_code == 202
    job = wait_for_job(client, response.json()["job_id"])
    assert job["status"] == "done", job
    assert client.get("/health").json()["version"] != before
    hits = client.post("/ask", json={"question": "Who will live in the restored cottage beside the lighthouse?"}).json()
    assert hits["passages"][0]["doc_id"] == "lighthouse"
    response = client.delete("/documents/lighthouse")
    assert response.status_code == 202
    assert wait_for_job(client, response.json()["job_id"])["status"] == "done"
    assert_error(client.get("/documents/lighthouse"), 404)
    assert not (assistant.settings.docs_dir / "lighthouse.txt").exists()


@pytest.mark.parametrize(
    ("name", "data", "contains"),
    [("../../etc/passwd", b"root", "only .txt"), ("empty.txt", b"", "empty"), ("bin.txt", b"\x00\x9f", "binary"),
     ("latin.txt", b"caf\xe9 noir", "UTF-8"), ("001_75d156586012b08a.txt", b"Other text entirely.", "already exists"),
     ("big.txt", b"y" * 1_000_001, "limit")],
)
def test_bad_uploads_are_rejected_and_change_nothing(client: TestClient, assistant: Assistant, name: str,
                                                     data: bytes, contains: str) -> None:
    settings = assistant.settings
    before = folder_state(settings.docs_dir, settings.index_dir)
    response = client.post("/documents", files=[("files", (name, data, "text/plain"))])
    assert_error(response, 422, "bad_document", contains)
    assert folder_state(settings.docs_dir, settings.index_dir) == before


def test_upload_without_files_and_delete_unknown(client: TestClient) -> None:
    assert_error(client.post("/documents"), 422)
    assert_error(client.delete("/documents/nope"), 404, "not_found")
    assert_error(client.get("/jobs/nope"), 404)


def test_token_guards_changes_but_not_questions(assistant: Assistant) -> None:
    guarded = Assistant(dataclasses.replace(assistant.settings, api_token="s3cret"), assistant.embedder)
    guarded.load()
    with TestClient(create_app(guarded)) as client:
        upload = [("files", ("lighthouse.txt", NEW_ARTICLE.encode(), "text/plain"))]
        assert_error(client.post("/documents", files=upload), 401)
        assert_error(client.delete("/documents/001_75d156586012b08a", headers={"Authorization": "Bearer wrong"}), 401)
        assert client.post("/ask", json={"question": "Hetao"}).status_code == 200
        response = client.post("/documents", files=upload, headers={"Authorization": "Bearer s3cret"})
        assert response.status_code == 202


def test_page_and_openapi(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    spec = client.get("/openapi.json").json()
    for path in ("/ask", "/health", "/documents", "/documents/{doc_id}", "/jobs/{job_id}"):
        assert path in spec["paths"]
    assert client.get("/docs").status_code == 200
    assert "cdn" not in client.get("/docs").text.lower()


def test_serving_holds_faiss_and_blas_to_one_thread_in_every_thread() -> None:
    """Request threads start after limit_threads, so the limit must reach them, not only the caller."""
    # In a child process: the limit is process-wide and would leak into the other tests.
    code = """
import threading
from qa.api import limit_threads
limit_threads()
import faiss
seen = []
worker = threading.Thread(target=lambda: seen.append(faiss.omp_get_max_threads()))
worker.start(); worker.join()
try:
    from threadpoolctl import threadpool_info
    blas = sorted({pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"})
except ImportError:
    blas = [1]
print(faiss.omp_get_max_threads(), seen[0], blas)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "1 1 [1]"


def test_finished_jobs_are_forgotten_beyond_a_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    from qa.api import Jobs

    class Report:
        version = "v-test"

    jobs = Jobs()
    monkeypatch.setattr(Jobs, "KEEP_FINISHED", 3)
    try:
        done = []
        for _ in range(6):
            job = jobs.submit("add", ["a.txt"], lambda: Report())
            assert job.done.wait(10)
            done.append(job.job_id)
        latest = jobs.submit("add", ["a.txt"], lambda: Report())
        assert latest.done.wait(10)
        kept = [job_id for job_id in done + [latest.job_id] if jobs.get(job_id) is not None]
        assert kept == done[-2:] + [latest.job_id]
        assert jobs.get(latest.job_id).status == "done"
    finally:
        jobs.shutdown()
