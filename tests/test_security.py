"""The server against other web sites, hostile article texts and slow clients (issue 14, parts 1, 2 and 5).

Timing tests compare a hostile input with a plain article of the same size, parsed the same way, and
bound the ratio: a pattern that is quadratic in its input is hundreds of times slower at these sizes,
a linear one a few times at most, whatever the machine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qa import documents
from qa.api import create_app, server_options
from qa.assistant import Assistant, Upload
from qa.chunking import chunk_text
from qa.config import resolve
from qa.errors import ConfigError, DocumentError
from qa.security import exposure_notice, header_timeout_protocol

from .conftest import SEEDS
from .test_api import wait_for_job
from .test_index import NEW_ARTICLE, folder_state

SEED_ID = "001_75d156586012b08a"


def guarded_client(assistant: Assistant, **changes: Any) -> TestClient:
    """A client of an app over the same index, with some settings changed."""
    other = Assistant(dataclasses.replace(assistant.settings, **changes), assistant.embedder)
    other.load()
    return TestClient(create_app(other))


@pytest.fixture
def client(assistant: Assistant) -> Iterator[TestClient]:
    with TestClient(create_app(assistant)) as test_client:
        yield test_client


def assert_refused(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]


UPLOAD = [("files", ("lighthouse.txt", NEW_ARTICLE.encode(), "text/plain"))]


# --- 1. other web sites ---------------------------------------------------------------------------

def test_a_foreign_host_gets_nothing(client: TestClient, assistant: Assistant) -> None:
    """DNS rebinding: a page on evil.example, resolved to 127.0.0.1, names evil.example in Host."""
    before = folder_state(assistant.settings.docs_dir)
    evil = {"Host": "evil.example:8000"}
    for response in (client.get("/documents", headers=evil), client.get(f"/documents/{SEED_ID}", headers=evil),
                     client.get("/ask", params={"q": "Hetao"}, headers=evil), client.get("/openapi.json", headers=evil),
                     client.post("/ask", json={"question": "Hetao"}, headers=evil),
                     client.post("/documents", files=UPLOAD, headers={**evil, "Origin": "http://evil.example:8000"}),
                     client.delete(f"/documents/{SEED_ID}", headers={**evil, "Origin": "http://evil.example:8000"}),
                     client.get("/", headers=evil)):
        assert_refused(response, 403, "forbidden_host")
        assert "x-content-type-options" in response.headers  # the refusal carries the security headers too
    assert folder_state(assistant.settings.docs_dir) == before


@pytest.mark.parametrize("host", ["localhost:8000", "LOCALHOST", "127.0.0.1:8000", "127.0.0.2", "[::1]:8000",
                                  "qa.localhost:8000", "testserver"])
def test_loopback_names_and_the_address_arrived_at_are_answered(client: TestClient, host: str) -> None:
    # TestClient's connection "arrives at" testserver, as uvicorn's arrives at the socket's address.
    assert client.get("/documents", headers={"Host": host}).status_code == 200


def test_configured_host_names(assistant: Assistant) -> None:
    with guarded_client(assistant, allowed_hosts="qa.example.lan, Other.Example") as client:
        assert client.get("/documents", headers={"Host": "qa.example.lan:8000"}).status_code == 200
        assert client.get("/documents", headers={"Host": "other.example"}).status_code == 200
        assert_refused(client.get("/documents", headers={"Host": "evil.example"}), 403, "forbidden_host")
    with guarded_client(assistant, allowed_hosts="*") as client:
        assert client.get("/documents", headers={"Host": "anything.example"}).status_code == 200
    with guarded_client(assistant, host="qa-box.lan") as client:  # the name --host binds
        assert client.get("/documents", headers={"Host": "qa-box.lan:8000"}).status_code == 200
    settings = resolve({"docs_dir": SEEDS, "model": "fake-256"}, env={"QA_ALLOWED_HOSTS": "a.example,b.example"})
    assert settings.allowed_hosts == "a.example,b.example"


@pytest.mark.parametrize("headers", [{"Origin": "http://evil.example"}, {"Origin": "null"},
                                     {"Origin": "http://testserver.evil.example"}, {"Origin": "http://testserver:9999"},
                                     {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}])
def test_changes_from_another_site_are_refused(client: TestClient, assistant: Assistant, headers: dict) -> None:
    """A no-cors multipart POST from another origin indexed its article; a DELETE removed one."""
    before = folder_state(assistant.settings.docs_dir)
    assert_refused(client.post("/documents", files=UPLOAD, headers=headers), 403, "cross_origin")
    assert_refused(client.delete(f"/documents/{SEED_ID}", headers=headers), 403, "cross_origin")
    assert_refused(client.post("/ask", json={"question": "Hetao"}, headers=headers), 403, "cross_origin")
    assert folder_state(assistant.settings.docs_dir) == before
    # Reads with the same headers are answered: a cross-site page cannot read the response anyway.
    assert client.get("/documents", headers=headers).status_code == 200


def test_the_page_and_plain_clients_keep_working(client: TestClient) -> None:
    same = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
    assert client.post("/ask", json={"question": "Hetao"}, headers=same).status_code == 200
    loopback = {"Host": "127.0.0.1:8000", "Origin": "http://127.0.0.1:8000"}
    assert client.post("/ask", json={"question": "Hetao"}, headers=loopback).status_code == 200
    assert client.post("/ask", json={"question": "Hetao"}).status_code == 200  # curl, scripts: no Origin
    assert client.post("/ask", json={"question": "Hetao"}, headers={"Sec-Fetch-Site": "none"}).status_code == 200
    response = client.post("/documents", files=UPLOAD, headers=same)
    assert response.status_code == 202
    assert wait_for_job(client, response.json()["job_id"])["status"] == "done"


def test_the_token_can_guard_reads(assistant: Assistant) -> None:
    with guarded_client(assistant, api_token="s3cret", api_token_reads=True) as client:
        for path in ("/documents", f"/documents/{SEED_ID}", "/ask?q=Hetao", "/openapi.json", "/jobs/nope"):
            assert_refused(client.get(path), 401, "unauthorized")
        assert_refused(client.post("/ask", json={"question": "Hetao"}), 401, "unauthorized")
        bearer = {"Authorization": "Bearer s3cret"}
        assert client.get("/documents", headers=bearer).status_code == 200
        assert client.get("/documents", headers={"X-API-Token": "s3cret"}).status_code == 200
        assert_refused(client.get("/documents", headers={"Authorization": "Bearer s3cre"}), 401, "unauthorized")
        assert client.get("/").status_code == 200 and client.get("/health").status_code == 200
    with guarded_client(assistant, api_token="s3cret") as client:  # the default: only changes need it
        assert client.get("/documents").status_code == 200
    with pytest.raises(ConfigError, match="QA_API_TOKEN"):
        resolve({"docs_dir": SEEDS, "model": "fake-256"}, env={"QA_API_TOKEN_READS": "1"})


def test_the_token_is_compared_as_utf8_bytes(assistant: Assistant) -> None:
    """Over a real socket: TestClient re-encodes header values, a browser or curl sends them as they are."""
    import httpx

    other = Assistant(dataclasses.replace(assistant.settings, api_token="tökén"), assistant.embedder)
    other.load()
    for port in _serve(create_app(other), header_seconds=10):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            latin1 = {"Authorization": b"Bearer " + "tökén".encode("latin-1")}
            assert client.post("/documents", files=UPLOAD, headers=latin1).status_code == 401
            assert client.delete(f"/documents/{SEED_ID}", headers={"X-API-Token": "tökén".encode("latin-1")}).status_code == 401
            response = client.post("/documents", files=UPLOAD, headers={"Authorization": "Bearer tökén".encode()})
            assert response.status_code == 202, response.text
            job = response.json()
            deadline = time.monotonic() + 30
            while job["status"] not in ("done", "failed") and time.monotonic() < deadline:
                time.sleep(0.02)
                job = client.get(f"/jobs/{job['job_id']}").json()
            assert job["status"] == "done", job


def test_serving_beyond_this_machine_says_what_it_exposes(assistant: Assistant) -> None:
    assert exposure_notice(assistant.settings) == []  # 127.0.0.1
    assert exposure_notice(dataclasses.replace(assistant.settings, host="localhost")) == []
    notice = " ".join(exposure_notice(dataclasses.replace(assistant.settings, host="0.0.0.0")))
    assert "every network interface" in notice and "read every article" in notice
    assert "set QA_API_TOKEN" in notice and "QA_ALLOWED_HOSTS" in notice
    guarded = dataclasses.replace(assistant.settings, host="0.0.0.0", api_token="t", api_token_reads=True,
                                  allowed_hosts="qa.lan")
    notice = " ".join(exposure_notice(guarded))
    assert "only with the API token" in notice and "need the API token" in notice and "qa.lan" in notice


# --- 2. hostile article texts ---------------------------------------------------------------------

SIZE = 30_000
# At this size the quadratic patterns took 100 to 1,000 times a plain article's time; linear ones take
# a few times at most (a single 30 KB line costs more per character than short paragraphs).
MAX_RATIO = 25.0
PLAIN = (SEEDS / f"{SEED_ID}.txt").read_text()


def _best_of(work: Callable[[], object], runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def _read(text: str, suffix: str) -> None:
    """What an upload goes through: parsing, then chunking of the cleaned text (and of the raw text)."""
    try:
        doc = documents.parse(text.encode(), "t", suffix)
        chunk_text("t", doc.text)
    except DocumentError:
        pass
    chunk_text("t", text)


def _plain_seconds(size: int, suffix: str) -> float:
    plain = (PLAIN * (size // len(PLAIN) + 1))[:size]
    return _best_of(lambda: _read(plain, suffix))


def assert_linear(text: str, suffix: str) -> None:
    ratio = _best_of(lambda: _read(text, suffix)) / max(_plain_seconds(len(text), suffix), 1e-4)
    assert ratio < MAX_RATIO, f"{len(text):,} characters took {ratio:.0f} times a plain article's time"


REPORTED = {
    "no @ (the email pattern)": ("a" * SIZE, ".txt"),
    "a run of dots (sentence boundaries)": ("Intro sentence here. a" + "." * SIZE + "a", ".txt"),
    "unclosed link brackets (markdown)": ("[a" * (SIZE // 2), ".md"),
    "unclosed image brackets (markdown)": ("![a" * (SIZE // 3), ".md"),
    "unclosed link addresses (markdown)": ("[a](" * (SIZE // 4), ".md"),
    "many @ signs": ("a@" * (SIZE // 2), ".txt"),
    "closing brackets after a dot": ("A b." + ")" * SIZE + "a", ".txt"),
    "front matter that never closes": ("---\n" + "\n---" + " " * SIZE, ".md"),
    # html.parser read the rest of the page again at each unfinished tag: 80 KB of these took 5 to 17 s.
    "unfinished tags (HTML)": ("<a" * (SIZE // 2), ".html"),
    "unfinished attributes (HTML)": ('<p x="' * (SIZE // 6), ".html"),
    "unfinished end tags (HTML)": ("</" * (SIZE // 2), ".html"),
    "a never-ending tag name (HTML)": ("<" + "a" * SIZE, ".html"),
    "comments that never close (HTML)": ("<p>Text.</p><!--" * (SIZE // 16), ".html"),
}


@pytest.mark.parametrize("name", list(REPORTED))
def test_reported_inputs_take_linear_time(name: str) -> None:
    text, suffix = REPORTED[name]
    assert_linear(text, suffix)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(unit=st.text(alphabet="a .!?…\"')]([@#-*_`:/\nhtp<>=&;", min_size=1, max_size=6),
       prefix=st.sampled_from(["", "Intro sentence here. ", "---\n", "# Title\n", "URL: ", "<p>"]),
       suffix=st.sampled_from([".txt", ".md", ".html"]))
def test_generated_inputs_take_linear_time(unit: str, prefix: str, suffix: str) -> None:
    """A short piece repeated to 30 KB: what makes a backtracking pattern slow is one character or two
    repeated at length, after a start that lets the pattern begin."""
    assert_linear(prefix + unit * (SIZE // len(unit)), suffix)


@pytest.mark.parametrize("page", ["<![" * 1000, "<!DOCTYPE", "<script>" * 100, "<?xml" * 100])
def test_a_broken_page_is_a_clear_error_not_a_crash(page: str) -> None:
    """html.parser raised its own AssertionError on "<![<![...": a build met it as an unexpected error."""
    with pytest.raises(DocumentError, match="no article text"):
        documents.parse(page.encode(), "page", ".html")


def test_a_pdf_paragraph_of_many_lines_takes_linear_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Wrapped lines were added to one growing string: 80,000 lines of one paragraph took 11 s."""
    import pypdf

    def reader_of(text: str) -> type:
        class Page:
            def extract_text(self) -> str:
                return text

        class Reader:
            is_encrypted = False
            pages = [Page()]

            def __init__(self, data: Any) -> None:
                pass

        return Reader

    wrapped = "\n".join(["y" * 50] * 40_000)  # no line ends a sentence: one paragraph
    plain = "\n".join(["A line of fifty characters that ends a sentence."] * 40_000)  # a paragraph each

    def seconds(text: str) -> float:
        monkeypatch.setattr(pypdf, "PdfReader", reader_of(text))
        return _best_of(lambda: documents._pdf_to_text(b"%PDF-1.4", "a.pdf"))

    ratio = seconds(wrapped) / max(seconds(plain), 1e-4)
    assert ratio < MAX_RATIO, f"one paragraph of 40,000 lines took {ratio:.0f} times as long as 40,000 paragraphs"


def test_a_runaway_parse_is_stopped_with_a_clear_error() -> None:
    text = (PLAIN * 40).encode()
    with pytest.raises(DocumentError, match="took over 0 s to read and was stopped"):
        documents.parse(text, "slow", ".txt", budget=0.0)
    assert documents.parse(text, "slow", ".txt").text  # the default budget leaves room for large articles


def test_an_upload_is_parsed_once_and_not_on_the_event_loop(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    parsed_on: list[bool] = []
    real_parse = documents.parse

    def parse(data: bytes, doc_id: str, *args: Any, **kwargs: Any) -> documents.Document:
        if doc_id == "lighthouse":
            try:
                asyncio.get_running_loop()
                parsed_on.append(True)
            except RuntimeError:
                parsed_on.append(False)
        return real_parse(data, doc_id, *args, **kwargs)

    monkeypatch.setattr(documents, "parse", parse)
    response = client.post("/documents", files=UPLOAD)
    assert response.status_code == 202
    assert wait_for_job(client, response.json()["job_id"])["status"] == "done"
    assert client.get("/documents/lighthouse").status_code == 200
    assert parsed_on == [False], "parsed once, in a worker thread (True: on the event loop)"


# --- 5. smaller ones --------------------------------------------------------------------------

ARTICLE = "Harbour city opens floating solar farm\n\nThe council switched on the farm on Tuesday, officials said.\n"


@pytest.mark.parametrize(("extra", "url"), [
    ("READ MORE: https://phish.example/login\n", None),  # a line the cleaner removes
    ("Officials pointed readers to https://phish.example/login for details.\n", None),  # a link in a sentence
    ("URL: https://news.example/solar-farm\n", "https://news.example/solar-farm"),
    ("Original article: https://news.example/solar\n", "https://news.example/solar"),
    ("Source: javascript:alert(1)\n", None),
])
def test_the_url_comes_only_from_metadata_or_a_canonical_line(extra: str, url: str | None) -> None:
    assert documents.parse((ARTICLE + extra).encode(), "solar", ".txt").url == url


def test_front_matter_and_sidecar_values_are_checked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    article = tmp_path / "story.md"
    article.write_text("---\ntitle: A fine title\ndate: <iframe src=javascript:alert(1)>\nurl: javascript:alert(1)\n---\n"
                       "Harbour city opens floating solar farm\n\nPublished March 4, 2024\n\nThe farm opened on Tuesday.\n")
    with caplog.at_level(logging.WARNING, logger="qa.documents"):
        doc = documents.load(article)
    assert doc.title == "A fine title"
    assert doc.published == "2024-03-04"  # the bad date is dropped: the text's own date is used
    assert doc.url is None
    assert "ignored its published" in caplog.text and "ignored its url" in caplog.text
    (tmp_path / "story.meta.json").write_text(json.dumps(
        {"date": "2024-13-45", "title": ["not", "text"], "source": "x" * 500, "url": "https://ok.example/a b"}))
    doc = documents.load(article)
    assert (doc.published, doc.title, doc.source, doc.url) == ("2024-03-04", "A fine title", None, None)
    (tmp_path / "story.meta.json").write_text(json.dumps({"date": "2019-05-06T10:00:00Z", "source": " Wire\u200b\n"}))
    doc = documents.load(article)
    assert (doc.published, doc.source) == ("2019-05-06", "Wire")


def test_ids_that_differ_only_in_case_are_refused(client: TestClient, assistant: Assistant, tmp_path: Path) -> None:
    response = client.post("/documents", files=[("files", (f"{SEED_ID.upper()}.txt", NEW_ARTICLE.encode(), "text/plain"))])
    assert response.status_code == 422 and "case" in response.json()["error"]["message"]
    pair = [Upload("Case.txt", NEW_ARTICLE.encode()), Upload("case.txt", (NEW_ARTICLE + "More.").encode())]
    with pytest.raises(DocumentError, match="case"):
        assistant.validate_uploads(pair)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "Case.txt").write_text(NEW_ARTICLE)
    (folder / "case.md").write_text(NEW_ARTICLE + "More.")
    with pytest.raises(DocumentError, match="differ only in case"):
        documents.article_files(folder)


def _serve(app: Any, header_seconds: float) -> Iterator[int]:
    import uvicorn

    options = {**server_options(), "http": header_timeout_protocol(header_seconds)}
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
        return True
    except (TimeoutError, socket.timeout):
        return False
    except ConnectionResetError:
        return True


def test_a_client_that_never_finishes_its_headers_is_cut_off() -> None:
    """1,500 connections that sent half a request stayed open for 40 s."""
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    assert issubclass(server_options()["http"], HttpToolsProtocol)
    for port in _serve(app, header_seconds=0.5):
        with socket.create_connection(("127.0.0.1", port)) as slow, socket.create_connection(("127.0.0.1", port)) as idle:
            slow.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            started = time.monotonic()
            assert _closed_within(slow, 10) and _closed_within(idle, 10)
            assert time.monotonic() - started < 5
        with socket.create_connection(("127.0.0.1", port)) as prompt:  # a whole request is answered, twice
            for _ in range(2):
                prompt.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                time.sleep(0.7)  # longer than the header limit: it counts only while headers arrive
                prompt.settimeout(5)
                assert prompt.recv(4096).startswith(b"HTTP/1.1 200")
