"""Bad input over the API and the CLI, and service hygiene.

Every bad input must get a clear 4xx (JSON error shape) or a one-line CLI error, the server must
stay up and keep answering as before, and the articles and index folders must be byte-for-byte
unchanged. Figures (inputs tried, rejected, accepted) go to tests/artifacts/reliability-*.json.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from qa import cli
from qa.api import create_app
from qa.assistant import Assistant
from qa.chunking import chunk_text
from qa.config import Settings
from qa.errors import IndexCorrupt

from .conftest import SEEDS
from .test_index import NEW_ARTICLE

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
REFERENCE_QUESTION = "What is the total area of the Hetao cooperation zone?"
SEED_ID = "001_75d156586012b08a"
TRACEBACK_MARKERS = ("Traceback (most recent call last)", 'File "/', "site-packages")


# --- shared helpers (test_crash, test_concurrency, test_load and test_fuzz use these too) ---------


def report(capsys: pytest.CaptureFixture[str], name: str, figures: dict[str, Any]) -> None:
    """Print a test's figures past pytest's capture and keep them in tests/artifacts/NAME.json."""
    ARTIFACTS.mkdir(exist_ok=True)
    target = ARTIFACTS / f"{name}.json"
    temp = target.with_name(f".{target.name}.{os.getpid()}")
    temp.write_text(json.dumps(figures, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    os.replace(temp, target)
    with capsys.disabled():
        print(f"\n[{name}] " + ", ".join(f"{key}={value}" for key, value in figures.items()))


def tree_digest(*folders: Path) -> str:
    """One hash over every file (hidden ones too) under the folders: names and bytes."""
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            digest.update(str(path.relative_to(folder.parent)).encode(errors="surrogateescape") + b"\0")
            if path.is_file():
                digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def around(settings: Settings) -> tuple[frozenset[Path], frozenset[Path]]:
    """What lies beside the articles and index folders: a traversal would write there."""
    root = settings.docs_dir.parent
    beside = files_under(root) - files_under(settings.docs_dir) - files_under(settings.index_dir)
    return frozenset(root.parent.iterdir()), frozenset(beside)


def qa_env(docs: Path, index: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without any QA_* setting, pointed at private folders and the fake model.

    The reader is off, as in the other fake-model tests: they check the sentence scorer's answers exactly.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("QA_")}
    env.update({"QA_DOCS_DIR": str(docs), "QA_INDEX_DIR": str(index), "QA_MODEL": "fake-256", "QA_READER": "off"})
    env.update(extra)
    return env


def _header(response: Any, name: str) -> str:
    """A response header from httpx (a string) or schemathesis (a list of strings)."""
    value = response.headers.get(name) or ""
    return value[0] if isinstance(value, list) else value


def error_problem(response: Any, statuses: range = range(400, 500)) -> str | None:
    """Why a response is not a clear error (a 4xx unless told) in the one JSON error shape, or None if it is."""
    if response.status_code not in statuses:
        return f"status {response.status_code}"
    if not _header(response, "content-type").startswith("application/json"):
        return f"content-type {_header(response, 'content-type')!r}"
    try:
        body = response.json()
    except ValueError:
        return "body is not JSON"
    if not (isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], dict)
            and set(body["error"]) == {"code", "message"}):
        return f"not the error shape: {response.text[:200]}"
    if not (isinstance(body["error"]["message"], str) and body["error"]["message"].strip()):
        return "empty error message"
    if any(marker in response.text for marker in TRACEBACK_MARKERS):
        return "stack trace in the response"
    if _header(response, "x-content-type-options") != "nosniff":
        return "no X-Content-Type-Options: nosniff"
    return None


def answer_key(body: dict[str, Any]) -> tuple:
    """What must not change between two answers to the same question from the same index."""
    answer = body["answer"]
    return ((answer["text"], answer["start"], answer["end"]) if answer else None,
            [(p["doc_id"], p["start"], p["end"], p["score"]) for p in body["passages"]])


# --- bad input over the API ---------------------------------------------------------------------


@dataclass
class Case:
    """One bad (or odd) input: how to send it and what must come back."""

    label: str
    send: Callable[[TestClient], Any]
    expect: str | int  # "reject" (clear 4xx), "ok" (200 with a well-formed answer), "either", or a status code
    contains: str = ""  # a word the error message must hold, so the user learns what to fix


def _json_post(body: bytes, content_type: str = "application/json", **headers: str) -> Callable[[TestClient], Any]:
    return lambda c: c.post("/ask", content=body, headers={"content-type": content_type, **headers})


def _chunked(total: int, piece: bytes = b"a" * 65536, head: bytes = b'{"question": "', tail: bytes = b'"}') -> Iterator[bytes]:
    """A body sent with Transfer-Encoding: chunked, i.e. with no Content-Length to check."""
    yield head
    sent = 0
    while sent < total:
        yield piece
        sent += len(piece)
    yield tail


def _upload(*files: tuple[str, bytes]) -> Callable[[TestClient], Any]:
    return lambda c: c.post("/documents", files=[("files", (name, data, "text/plain")) for name, data in files])


def question_cases() -> list[Case]:
    odd_but_fine = {
        "control characters": "\x1b[31mred\x1b[0m \x07 zone area?\x08",
        "newlines and CR": "What is the area\r\nof the Hetao\nzone?",
        "emoji": "🚀🔥💡🏙️",
        "emoji in a question": "What is the 🏙️ Hetao zone's total area? 🤔",
        "right-to-left Arabic": "ما هي المساحة الإجمالية لمنطقة التعاون؟",
        "right-to-left Hebrew": "מהו השטח הכולל של אזור שיתוף הפעולה?",
        "bidi override": "area \u202egnahznehS\u202c zone",
        "Chinese": "河套深港科技创新合作区的总面积是多少？",
        "Japanese and Korean": "深圳の面積は？ 선전의 면적은?",
        "combining marks": "Z̷̢̛a̸l̵g̶o̴ zone a̵r̶e̷a̸",
        "markup": "<script>alert(1)</script><img src=x onerror=alert(2)>",
        "SQL-like": "'; DROP TABLE articles; -- area",
        "format strings": "%s%n%x {0} {__class__} ${HOME} $(id)",
        "one 999-char word": "a" * 999,
        "punctuation only": "?!.,;:",
        "stop words only": "the of and what is",
    }
    maybe = {
        "NUL and C0 bytes": "\x00\x01\x02\x03 zone",
        "C1 controls": "\x7f\x80\x85\x9f area",
        "zero-width only": "\u200b\u200c\u200d\ufeff",
        "non-characters": "\ufffe\uffff\U0010ffff",
    }
    rejected = {
        "empty": ("", ""),
        "blank spaces": ("     ", "empty"),
        "blank mixed whitespace": (" \t\n\r\u3000\u00a0 ", "empty"),
        "over the question limit": ("x" * 1001, "limit"),
        "over the schema limit": ("word " * 900, "4000"),
    }
    cases: list[Case] = []
    for label, text in odd_but_fine.items():
        cases.append(Case(f"POST question: {label}", lambda c, t=text: c.post("/ask", json={"question": t}), "ok"))
        cases.append(Case(f"GET question: {label}", lambda c, t=text: c.get("/ask", params={"q": t}), "ok"))
    for label, text in maybe.items():
        cases.append(Case(f"POST question: {label}", lambda c, t=text: c.post("/ask", json={"question": t}), "either"))
        cases.append(Case(f"GET question: {label}", lambda c, t=text: c.get("/ask", params={"q": t}), "either"))
    for label, (text, word) in rejected.items():
        cases.append(Case(f"POST question: {label}", lambda c, t=text: c.post("/ask", json={"question": t}), "reject", word))
        cases.append(Case(f"GET question: {label}", lambda c, t=text: c.get("/ask", params={"q": t}), "reject"))
    cases += [
        Case("POST question: lone surrogate", _json_post(b'{"question": "\\ud800 area"}'), "reject"),
        Case("POST question: huge (100 KB)", lambda c: c.post("/ask", json={"question": "area " * 20_000}), 413),
        Case("POST question: huge (5 MB)", lambda c: c.post("/ask", json={"question": "x" * 5_000_000}), 413),
        Case("GET question: missing", lambda c: c.get("/ask"), "reject"),
        Case("GET question: invalid UTF-8 escapes", lambda c: c.get("/ask?q=%ff%fe%fd"), "either"),
        Case("GET question: encoded surrogate", lambda c: c.get("/ask?q=%ED%A0%80area"), "either"),
        Case("GET question: repeated q", lambda c: c.get("/ask?q=a&q=b"), "either"),
    ]
    return cases


def parameter_cases() -> list[Case]:
    cases: list[Case] = []
    for value in (0, -1, 10**9, 10**100, 51, "five", "", 5.5, None, [5], {"n": 5}, True, False):
        cases.append(Case(f"POST top_k={value!r}", lambda c, v=value: c.post("/ask", json={"question": "Hetao", "top_k": v}),
                          "reject", "top_k"))
    for value in ("0", "-1", str(10**9), "five", "", "5.5", "1e3", "true", "0x10"):
        cases.append(Case(f"GET top_k={value!r}", lambda c, v=value: c.get("/ask", params={"q": "Hetao", "top_k": v}),
                          "reject", "top_k"))
    for value in (1, 50):
        cases.append(Case(f"POST top_k={value} (edge, valid)", lambda c, v=value: c.post("/ask", json={"question": "Hetao", "top_k": v}), "ok"))
    for value in ("fast", "", "HYBRID", 5, None):
        expect = "ok" if value is None else "reject"
        cases.append(Case(f"POST mode={value!r}", lambda c, v=value: c.post("/ask", json={"question": "Hetao", "mode": v}), expect))
    cases.append(Case("GET mode=fast", lambda c: c.get("/ask", params={"q": "Hetao", "mode": "fast"}), "reject"))
    return cases


def json_cases() -> list[Case]:
    return [
        Case("JSON: not JSON", _json_post(b"{bad json"), "reject"),
        Case("JSON: truncated", _json_post(b'{"question": "area'), "reject"),
        Case("JSON: trailing garbage", _json_post(b'{"question": "area"}}}'), "reject"),
        Case("JSON: empty body", _json_post(b""), "reject"),
        Case("JSON: null", _json_post(b"null"), "reject"),
        Case("JSON: array", _json_post(b"[]"), "reject"),
        Case("JSON: string", _json_post(b'"area"'), "reject"),
        Case("JSON: number", _json_post(b"42"), "reject"),
        Case("JSON: NaN", _json_post(b'{"question": NaN}'), "reject"),
        Case("JSON: binary", _json_post(b"\xff\xfe\x00\x01\x9c"), "reject"),
        Case("JSON: deeply nested", _json_post(b"[" * 20_000 + b"]" * 20_000), "reject"),
        Case("JSON: nested objects", _json_post(b'{"question": ' * 4000 + b'"x"' + b"}" * 4000), "reject"),
        Case("JSON: question is a number", lambda c: c.post("/ask", json={"question": 42}), "reject"),
        Case("JSON: question is null", lambda c: c.post("/ask", json={"question": None}), "reject"),
        Case("JSON: question is a list", lambda c: c.post("/ask", json={"question": ["a", "b"]}), "reject"),
        Case("JSON: question is an object", lambda c: c.post("/ask", json={"question": {"text": "a"}}), "reject"),
        Case("JSON: question is a boolean", lambda c: c.post("/ask", json={"question": True}), "reject"),
        Case("JSON: no question", lambda c: c.post("/ask", json={"top_k": 3}), "reject"),
        Case("JSON: unknown field", lambda c: c.post("/ask", json={"question": "area", "admin": True}), "reject"),
        Case("JSON: sent as text/plain", _json_post(b'{"question": "area"}', "text/plain"), "reject"),
        Case("JSON: sent as a form", _json_post(b"question=area", "application/x-www-form-urlencoded"), "reject"),
        Case("JSON: with a BOM", _json_post(b'\xef\xbb\xbf{"question": "area"}'), "either"),
        Case("JSON: Content-Length not a number", _json_post(b'{"question": "area"}', **{"content-length": "abc"}), 413),
        Case("JSON: Content-Length negative", _json_post(b'{"question": "area"}', **{"content-length": "-1"}), 413),
        Case("JSON: oversized (Content-Length)", _json_post(json.dumps({"question": "a" * 70_000}).encode()), 413),
        Case("JSON: oversized without Content-Length (chunked, 2 MB)",
             lambda c: c.post("/ask", content=_chunked(2_000_000), headers={"content-type": "application/json"}), 413),
    ]


def upload_cases(settings: Settings) -> list[Case]:
    limit = settings.max_upload_bytes
    seed_text = (SEEDS / f"{SEED_ID}.txt").read_bytes()
    plain = b"A perfectly ordinary article about a harbour festival. It has two sentences."
    return [
        Case("upload: empty file", _upload(("empty.txt", b"")), "reject", "empty"),
        Case("upload: whitespace only", _upload(("blank.txt", b" \n\t\r\n ")), "reject", "empty"),
        Case("upload: BOM only", _upload(("bom.txt", b"\xef\xbb\xbf")), "reject"),
        Case("upload: only furniture", _upload(("furniture.txt", b"Advertisement\nShare\n12345\n")), "reject", "no article text"),
        Case("upload: binary with NUL", _upload(("binary.txt", bytes(range(256)) * 4)), "reject", "binary"),
        Case("upload: PNG named .txt", _upload(("image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")), "reject", "binary"),
        Case("upload: Latin-1", _upload(("latin.txt", "Café au lait à la française.".encode("latin-1"))), "reject", "UTF-8"),
        Case("upload: UTF-16", _upload(("utf16.txt", "An article in UTF-16.".encode("utf-16"))), "reject"),
        Case("upload: one byte over the size limit", _upload(("big.txt", b"y" * (limit + 1))), "reject", "limit"),
        Case("upload: request over the body limit (Content-Length)",
             _upload(*[(f"part{i}.txt", b"z" * limit) for i in range(22)]), 413),
        Case("upload: body over the limit without Content-Length (chunked)",
             lambda c: c.post("/documents", content=_chunked(22 * limit, head=b"--b\r\nContent-Disposition: form-data; "
                                                             b"name=\"files\"; filename=\"x.txt\"\r\n\r\n", tail=b"\r\n--b--\r\n"),
                              headers={"content-type": "multipart/form-data; boundary=b"}), 413),
        Case("upload: ../../etc/passwd", _upload(("../../etc/passwd", b"root:x:0:0:root:/root:/bin/bash\n")), "reject", "only .txt"),
        Case("upload: /etc/shadow", _upload(("/etc/shadow", b"root:*:19000:0:99999:7:::\n")), "reject", "only .txt"),
        Case("upload: no suffix", _upload(("README", plain)), "reject", "only .txt"),
        Case("upload: .docx", _upload(("paper.docx", b"PK\x03\x04" + plain)), "reject", "only .txt"),
        Case("upload: a broken .pdf", _upload(("paper.pdf", b"%PDF-1.4 " + plain)), "reject", "not a readable PDF"),
        Case("upload: .txt.exe", _upload(("article.txt.exe", plain)), "reject", "only .txt"),
        Case("upload: .exe", _upload(("setup.exe", b"MZ\x90\x00" + plain)), "reject", "only .txt"),
        Case("upload: name is only a suffix", _upload((".txt", plain)), "reject"),
        Case("upload: name is dots", _upload(("....txt", plain)), "reject", "usable"),
        Case("upload: Chinese name", _upload(("新闻.txt", plain)), "reject", "usable"),
        Case("upload: emoji name", _upload(("🚀🔥.md", plain)), "reject", "usable"),
        Case("upload: 300-character name", _upload(("n" * 300 + ".txt", plain)), "reject"),
        Case("upload: 250-character name", _upload(("m" * 250 + ".txt", plain)), "reject"),
        Case("upload: empty file name", _upload(("", plain)), "reject"),
        Case("upload: name of an existing article", _upload((f"{SEED_ID}.txt", plain)), "reject", "already exists"),
        Case("upload: existing id, other suffix", _upload((f"{SEED_ID}.md", plain)), "reject", "already exists"),
        # Two different texts under one name, so it is the name check that refuses them, not the text check.
        Case("upload: duplicate names in one request", _upload(("twin.txt", plain + b" One twin."), ("twin.txt", plain + b" Other twin.")),
             "reject", "already exists"),
        Case("upload: same id, two suffixes", _upload(("twin.txt", plain + b" One twin."), ("twin.md", plain + b" Other twin.")),
             "reject", "already exists"),
        Case("upload: an existing article's text under a second name", _upload(("copy.txt", seed_text)), "reject", "same text"),
        Case("upload: one text under two new names", _upload(("one.txt", plain), ("two.txt", plain)), "reject", "same text"),
        Case("upload: one good file and one bad", _upload(("good.txt", plain), ("bad.txt", b"\x00")), "reject", "binary"),
        Case("upload: 21 files", _upload(*[(f"f{i}.txt", plain + str(i).encode()) for i in range(21)]), "reject", "at most"),
        Case("upload: no files", lambda c: c.post("/documents"), "reject"),
        Case("upload: a text field, not a file", lambda c: c.post("/documents", data={"files": "not a file"}), "reject"),
        Case("upload: JSON instead of a form", lambda c: c.post("/documents", json={"files": ["a.txt"]}), "reject"),
        Case("upload: broken multipart", lambda c: c.post("/documents", content=b"--x\r\nnonsense",
                                                          headers={"content-type": "multipart/form-data; boundary=x"}), "reject"),
        Case("delete: unknown id", lambda c: c.delete("/documents/nope"), "reject", "no article"),
        Case("delete: traversal id", lambda c: c.delete("/documents/..%2F..%2Fetc%2Fpasswd"), "reject"),
        Case("delete: dotted id", lambda c: c.delete("/documents/.."), "reject"),
        Case("delete: 2000-char id", lambda c: c.delete("/documents/" + "q" * 2000), "reject"),
        Case("get: unknown article", lambda c: c.get("/documents/nope"), "reject", "no article"),
        Case("get: traversal article", lambda c: c.get("/documents/..%2F..%2Fseeds"), "reject"),
        Case("get: unknown job", lambda c: c.get("/jobs/" + "j" * 500), "reject"),
        Case("unknown route", lambda c: c.get("/admin"), "reject"),
        Case("wrong method", lambda c: c.put("/ask", json={"question": "area"}), "reject"),
    ]


def _wait_for_job(client: TestClient, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s")


def run_cases(client: TestClient, settings: Settings, cases: list[Case]) -> tuple[list[str], dict[str, int]]:
    """Send every case; return what went wrong and the counts of outcomes."""
    folders = (settings.docs_dir, settings.index_dir)
    outside = around(settings)
    before = tree_digest(*folders)
    reference = answer_key(client.post("/ask", json={"question": REFERENCE_QUESTION}).json())
    problems: list[str] = []
    counts = {"tried": 0, "rejected_4xx": 0, "answered_200": 0, "server_errors": 0}
    for case in cases:
        counts["tried"] += 1
        try:
            response = case.send(client)
        except Exception as exc:  # the client itself failed: the server broke the connection or crashed
            problems.append(f"{case.label}: request failed: {type(exc).__name__}: {exc}")
            continue
        status = response.status_code
        counts["server_errors"] += status >= 500
        counts["rejected_4xx"] += 400 <= status < 500
        counts["answered_200"] += status == 200
        if 200 <= status < 300 and "job_id" in response.text:
            _wait_for_job(client, response.json()["job_id"])  # let a wrongly accepted upload finish before hashing
        expect_reject = case.expect == "reject" or isinstance(case.expect, int) or (case.expect == "either" and status != 200)
        if expect_reject:
            problem = error_problem(response)
            if isinstance(case.expect, int) and status != case.expect:
                problem = f"status {status}, expected {case.expect}: {response.text[:150]}"
            elif problem is None and case.contains and case.contains.lower() not in response.json()["error"]["message"].lower():
                problem = f"message does not say {case.contains!r}: {response.json()['error']['message']!r}"
            if problem:
                problems.append(f"{case.label}: {problem}")
        elif status != 200:
            problems.append(f"{case.label}: status {status}, expected 200: {response.text[:150]}")
        else:
            body = response.json()
            if not {"question", "answer", "passages", "index_version"} <= set(body):
                problems.append(f"{case.label}: malformed answer {response.text[:150]}")
        digest = tree_digest(*folders)
        if digest != before:
            problems.append(f"{case.label}: the articles or index folder changed")
            before = digest
        if around(settings) != outside:
            problems.append(f"{case.label}: a file appeared outside the articles and index folders")
            outside = around(settings)
    # The server is still up and answers exactly as it did before the barrage.
    health = client.get("/health")
    if health.status_code != 200 or not health.json()["loaded"]:
        problems.append(f"health after the bad inputs: {health.status_code} {health.text[:150]}")
    after = client.post("/ask", json={"question": REFERENCE_QUESTION})
    if after.status_code != 200 or answer_key(after.json()) != reference:
        problems.append("the reference question is answered differently after the bad inputs")
    return problems, counts


@pytest.fixture
def client(assistant: Assistant) -> Iterator[TestClient]:
    # raise_server_exceptions=False: a 500 must show up as a response to count, not as a test crash.
    with TestClient(create_app(assistant), raise_server_exceptions=False) as test_client:
        yield test_client


def test_bad_questions_and_json_over_the_api(client: TestClient, assistant: Assistant,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    cases = question_cases() + parameter_cases() + json_cases()
    problems, counts = run_cases(client, assistant.settings, cases)
    report(capsys, "reliability-api-questions", {**counts, "problems": len(problems)})
    assert not problems, "\n".join(problems)


def test_bad_uploads_over_the_api(client: TestClient, assistant: Assistant, capsys: pytest.CaptureFixture[str]) -> None:
    problems, counts = run_cases(client, assistant.settings, upload_cases(assistant.settings))
    report(capsys, "reliability-api-uploads", {**counts, "problems": len(problems)})
    assert not problems, "\n".join(problems)


def test_path_like_upload_names_stay_inside_the_articles_folder(client: TestClient, assistant: Assistant) -> None:
    """Names with directories are flattened to their last part; nothing is written elsewhere."""
    settings = assistant.settings
    docs_before = tree_digest(settings.docs_dir)
    outside = around(settings)
    names = {"a/../../b.txt": "b", "..\\..\\windows.txt": "windows", "/etc/passwd.txt": "passwd", "./././dot.md": "dot"}
    for number, (name, doc_id) in enumerate(names.items()):
        text = NEW_ARTICLE.replace("May", f"May, year {number}").encode()
        response = client.post("/documents", files=[("files", (name, text, "text/plain"))])
        if response.status_code != 202:
            assert error_problem(response) is None, f"{name}: {response.text}"
            continue
        assert _wait_for_job(client, response.json()["job_id"])["status"] == "done", name
        stored = [p for p in files_under(settings.docs_dir) if p.stem == doc_id]
        assert [p.parent for p in stored] == [settings.docs_dir], name
        assert client.get(f"/documents/{doc_id}").status_code == 200
        removed = client.delete(f"/documents/{doc_id}")
        assert _wait_for_job(client, removed.json()["job_id"])["status"] == "done"
    assert tree_digest(settings.docs_dir) == docs_before
    assert around(settings) == outside, "files appeared outside the articles and index folders"


def test_duplicates_sent_before_the_first_is_indexed_are_refused_by_the_job(client: TestClient,
                                                                            assistant: Assistant) -> None:
    """Both requests pass the quick check; the second job must fail clearly and leave the first in place."""
    docs = assistant.settings.docs_dir
    other = NEW_ARTICLE.replace("lighthouse", "watchtower").encode()
    pairs = [(("race.txt", NEW_ARTICLE.encode()), ("race.txt", other), "already exists"),
             (("twin_a.txt", other), ("twin_b.txt", other), "same text")]
    for first, second, message in pairs:
        jobs = [client.post("/documents", files=[("files", (name, data, "text/plain"))]) for name, data in (first, second)]
        if jobs[1].status_code != 202:  # refused at once: fine too
            assert error_problem(jobs[1]) is None and message in jobs[1].json()["error"]["message"]
            assert _wait_for_job(client, jobs[0].json()["job_id"])["status"] == "done"
        else:
            results = [_wait_for_job(client, response.json()["job_id"]) for response in jobs]
            assert results[0]["status"] == "done", results[0]
            assert results[1]["status"] == "failed" and message in results[1]["message"], results[1]
        assert (docs / first[0]).read_bytes() == first[1]
        if second[0] != first[0]:
            assert not (docs / second[0]).exists()
        assert not list(docs.glob(".*.part"))
        removed = client.delete(f"/documents/{Path(first[0]).stem}")
        assert _wait_for_job(client, removed.json()["job_id"])["status"] == "done"


# --- bad input over the CLI ---------------------------------------------------------------------


@dataclass
class CliCase:
    label: str
    argv: list[str]
    expect: str  # "error" (exit 1 or 2, one error line, nothing changed) or "ok" (exit 0, output, nothing changed)
    contains: str = ""
    env: dict[str, str] | None = None


def _cli_problem(case: CliCase, code: int, out: str, err: str) -> str | None:
    if any(marker in out + err for marker in TRACEBACK_MARKERS):
        return f"stack trace: {err[-300:]}"
    if case.expect == "ok":
        if code != 0 or not out.strip():
            return f"exit {code}, expected 0 with output; stderr {err.strip()[-200:]!r}"
        return None
    if code not in (1, 2):
        return f"exit {code}, expected 1 (error) or 2 (usage); stderr {err.strip()[-200:]!r}"
    lines = [line for line in err.splitlines() if line.strip()]
    # `qa` errors are one line "error: ..."; argparse's are a usage line and "qa CMD: error: ...".
    errors = [line for line in lines if line.startswith("error: ") or ": error: " in line]
    if len(errors) != 1 or (code == 1 and len(lines) != 1):
        return f"expected exactly one error line, got {err!r}"
    if case.contains and case.contains.lower() not in errors[0].lower():
        return f"error line does not say {case.contains!r}: {errors[0]!r}"
    return None


def cli_cases(tmp: Path, limit: int) -> list[CliCase]:
    files = tmp / "files"
    (files / "a" / "b").mkdir(parents=True)
    (files / "etc").mkdir()
    samples = {
        "empty.txt": b"", "blank.txt": b"  \n\t\n", "binary.txt": bytes(range(256)), "latin.txt": "Café crème.".encode("latin-1"),
        "utf16.txt": "Sixteen bits.".encode("utf-16"), "big.txt": b"w" * (limit + 1), "notes.pdf": b"%PDF-1.4",
        "notes.docx": b"PK\x03\x04",
        "etc/passwd": b"root:x:0:0:root:/root:/bin/bash\n", "新闻.txt": b"A headline about a harbour festival.",
        f"{SEED_ID}.txt": b"Another article that reuses an existing name.", "copy.txt": (SEEDS / f"{SEED_ID}.txt").read_bytes(),
        "fine.txt": NEW_ARTICLE.encode(), "furniture.md": b"Advertisement\nShare\n",
    }
    for name, data in samples.items():
        (files / name).write_bytes(data)
    f = lambda name: str(files / name)  # noqa: E731
    ask = lambda *rest: ["ask", *rest]  # noqa: E731
    return [
        CliCase("ask: empty", ask(""), "error", "empty"),
        CliCase("ask: blank", ask("   \t  "), "error", "empty"),
        CliCase("ask: over the limit", ask("x" * 1001), "error", "limit"),
        CliCase("ask: huge (100,000 chars)", ask("area " * 20_000), "error", "limit"),
        CliCase("ask: control characters", ask("\x1b[2J\x1b[31mzone\x07 area\x08?"), "ok"),
        CliCase("ask: emoji", ask("🚀🔥 What is the 🏙️ zone's area?"), "ok"),
        CliCase("ask: right-to-left", ask("ما هي المساحة الإجمالية لمنطقة التعاون؟"), "ok"),
        CliCase("ask: Chinese", ask("河套深港科技创新合作区的总面积是多少？"), "ok"),
        CliCase("ask: Chinese as JSON", ask("河套合作区", "--json"), "ok"),
        CliCase("ask: emoji as JSON", ask("🚀 zone", "--json"), "ok"),
        CliCase("ask: looks like a flag", ask("--", "--top-k"), "ok"),
        CliCase("ask: top_k 0", ask("area", "--top-k", "0"), "error", "top_k"),
        CliCase("ask: top_k -1", ask("area", "--top-k", "-1"), "error", "top_k"),
        CliCase("ask: top_k 10^9", ask("area", "--top-k", "1000000000"), "error", "top_k"),
        CliCase("ask: top_k five", ask("area", "--top-k", "five"), "error", "top-k"),
        CliCase("ask: top_k 2.5", ask("area", "--top-k", "2.5"), "error", "top-k"),
        CliCase("ask: top_k empty", ask("area", "--top-k", ""), "error", "top-k"),
        CliCase("ask: mode fast", ask("area", "--mode", "fast"), "error", "mode"),
        CliCase("ask: QA_TOP_K=five", ask("area"), "error", "QA_TOP_K", {"QA_TOP_K": "five"}),
        CliCase("ask: QA_TOP_K=0", ask("area"), "error", "top_k", {"QA_TOP_K": "0"}),
        CliCase("add: empty file", ["add", f("empty.txt")], "error", "empty"),
        CliCase("add: blank file", ["add", f("blank.txt")], "error", "empty"),
        CliCase("add: binary", ["add", f("binary.txt")], "error", "binary"),
        CliCase("add: Latin-1", ["add", f("latin.txt")], "error", "UTF-8"),
        CliCase("add: UTF-16", ["add", f("utf16.txt")], "error"),
        CliCase("add: over the size limit", ["add", f("big.txt")], "error", "limit"),
        CliCase("add: a .docx", ["add", f("notes.docx")], "error", "only .txt"),
        CliCase("add: a broken .pdf", ["add", f("notes.pdf")], "error", "not a readable PDF"),
        CliCase("add: ../../etc/passwd", ["add", str(files / "a" / "b" / ".." / ".." / "etc" / "passwd")], "error", "only .txt"),
        CliCase("add: Chinese file name", ["add", f("新闻.txt")], "error", "usable"),
        CliCase("add: name of an existing article", ["add", f(f"{SEED_ID}.txt")], "error", "already exists"),
        CliCase("add: the same file twice", ["add", f("fine.txt"), f("fine.txt")], "error", "already exists"),
        CliCase("add: an article's text under a second name", ["add", f("copy.txt")], "error", "same text"),
        CliCase("add: a good and a bad file", ["add", f("fine.txt"), f("binary.txt")], "error", "binary"),
        CliCase("add: only furniture", ["add", f("furniture.md")], "error", "no article text"),
        CliCase("add: a folder", ["add", str(files / "a")], "error", "not a file"),
        CliCase("add: missing file", ["add", f("missing.txt")], "error", "not a file"),
        CliCase("remove: unknown id", ["remove", "nope"], "error", "no article"),
        CliCase("remove: traversal id", ["remove", "../../etc/passwd"], "error", "no article"),
        CliCase("remove: empty id", ["remove", ""], "error", "no article"),
        CliCase("index: missing folder", ["index", "--docs", str(tmp / "nowhere")], "error", "does not exist"),
        CliCase("index: a file as the folder", ["index", "--docs", f("fine.txt")], "error", "does not exist"),
        CliCase("stats: missing index", ["stats", "--index", str(tmp / "no-index")], "error", "qa index"),
        CliCase("serve: port 99999", ["serve", "--port", "99999"], "error", "port"),
        CliCase("unknown command", ["explode"], "error", "invalid choice"),
    ]


def test_bad_input_over_the_cli(settings: Settings, assistant: Assistant, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import uvicorn

    cases = cli_cases(tmp_path, settings.max_upload_bytes)
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("`qa serve` started a server on bad input"))
    for key in [k for k in os.environ if k.startswith("QA_")]:
        monkeypatch.delenv(key)
    base_env = qa_env(settings.docs_dir, settings.index_dir)
    folders = (settings.docs_dir, settings.index_dir, SEEDS)
    before = tree_digest(*folders)
    problems: list[str] = []
    counts = {"tried": 0, "error_lines": 0, "answered": 0}
    for case in cases:
        counts["tried"] += 1
        for key, value in {**base_env, **(case.env or {})}.items():
            if key.startswith("QA_"):
                monkeypatch.setenv(key, value)
        try:
            code = cli.main(case.argv)
        except SystemExit as exc:  # argparse exits itself on usage errors
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:
            problems.append(f"{case.label}: crashed with {type(exc).__name__}: {exc}")
            continue
        finally:
            for key in case.env or {}:
                monkeypatch.delenv(key)
        out, err = capsys.readouterr()
        counts["error_lines" if code else "answered"] += 1
        problem = _cli_problem(case, code, out, err)
        if problem:
            problems.append(f"{case.label}: {problem}")
        if tree_digest(*folders) != before:
            problems.append(f"{case.label}: the articles or index folder changed")
            before = tree_digest(*folders)
    report(capsys, "reliability-cli", {**counts, "problems": len(problems)})
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("label", "argv", "expect"),
    [
        ("question with bytes that are not UTF-8", ["ask", b"\xff\xfe area \xc3".decode(errors="surrogateescape")], "either"),
        ("same, as JSON", ["ask", b"\xff\xfe area \xc3".decode(errors="surrogateescape"), "--json"], "either"),
        ("control characters as JSON", ["ask", "\x1b]0;pwned\x07 zone", "--json"], "ok"),
    ],
)
def test_cli_in_a_real_process_never_shows_a_traceback(assistant: Assistant, label: str, argv: list[str], expect: str) -> None:
    """Arguments come from the shell as bytes; a strict UTF-8 terminal must get an answer or one error line."""
    settings = assistant.settings
    before = tree_digest(settings.docs_dir, settings.index_dir)
    env = qa_env(settings.docs_dir, settings.index_dir, PYTHONIOENCODING="utf-8", LC_ALL="C.UTF-8")
    args = [a.encode(errors="surrogateescape") for a in [sys.executable, "-m", "qa.cli", *argv]]
    done = subprocess.run(args, env=env, capture_output=True, timeout=120)
    out, err = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    case = CliCase(label, argv, "ok" if expect == "ok" or done.returncode == 0 else "error")
    problem = _cli_problem(case, done.returncode, out, err)
    assert problem is None, f"{label}: {problem}"
    if done.returncode == 0 and "--json" in argv:
        json.loads(out)
    assert tree_digest(settings.docs_dir, settings.index_dir) == before


# --- huge articles ------------------------------------------------------------------------------


@pytest.mark.parametrize("unit", ["A. ", "Xy. "], ids=["initials", "short-sentences"])
def test_an_article_at_the_size_limit_is_chunked_in_linear_time(unit: str) -> None:
    """A 1 MB upload is allowed; cutting it into passages must not take quadratic time."""
    text = (unit * (Settings().max_upload_bytes // len(unit))).strip()
    started = time.process_time()
    chunks = chunk_text("huge", text)
    took = time.process_time() - started
    assert chunks and all(text[c.start:c.end] == c.text for c in chunks[:50])
    assert took < 5.0, f"chunking {len(text):,} chars of {unit!r} took {took:.1f}s of CPU"


# --- service hygiene ----------------------------------------------------------------------------


def _serve(monkeypatch: pytest.MonkeyPatch, settings: Settings, argv: list[str], **env: str) -> dict[str, Any]:
    """Run `qa serve` with uvicorn.run replaced; return what it would have been called with."""
    import uvicorn

    calls: dict[str, Any] = {}

    def fake_run(app: Any, **kwargs: Any) -> None:
        calls.update(kwargs, app=app)

    monkeypatch.setattr(uvicorn, "run", fake_run)
    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: None)
    for key in [k for k in os.environ if k.startswith("QA_")]:
        monkeypatch.delenv(key)
    for key, value in qa_env(settings.docs_dir, settings.index_dir, **env).items():
        if key.startswith("QA_"):
            monkeypatch.setenv(key, value)
    calls["code"] = cli.main(["serve", *argv])
    return calls


def test_serve_binds_loopback_unless_told_otherwise(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().host == "127.0.0.1"
    calls = _serve(monkeypatch, settings, [])
    assert calls["code"] == 0 and calls["host"] == "127.0.0.1"
    assert _serve(monkeypatch, settings, ["--port", "8123"])["host"] == "127.0.0.1"
    assert _serve(monkeypatch, settings, [], QA_HOST="0.0.0.0")["host"] == "0.0.0.0"
    assert _serve(monkeypatch, settings, ["--host", "::1"])["host"] == "::1"


def test_serve_over_a_damaged_index_says_how_to_rebuild(assistant: Assistant, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    settings = assistant.settings
    live = settings.index_dir / (settings.index_dir / "CURRENT").read_text().strip()
    (live / "vectors.npy").write_bytes((live / "vectors.npy").read_bytes()[:100])
    calls = _serve(monkeypatch, settings, [])
    _, err = capsys.readouterr()
    assert calls["code"] == 1 and "app" not in calls
    assert err.startswith("error: ") and err.count("\n") == 1 and "qa index --full" in err


def _token_client(assistant: Assistant, token: str) -> TestClient:
    guarded = Assistant(dataclasses.replace(assistant.settings, api_token=token), assistant.embedder)
    guarded.load()
    return TestClient(create_app(guarded), raise_server_exceptions=False)


def test_token_guards_changes_with_a_constant_time_check(assistant: Assistant, monkeypatch: pytest.MonkeyPatch) -> None:
    import qa.security

    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    # The token is compared in qa/security.py (token_matches), which qa/api.py calls for changes.
    monkeypatch.setattr(qa.security.hmac, "compare_digest", spy)
    settings = assistant.settings
    before = tree_digest(settings.docs_dir, settings.index_dir)
    upload = [("files", ("lighthouse.txt", NEW_ARTICLE.encode(), "text/plain"))]
    with _token_client(assistant, "s3cret-token") as client:
        # Asking and reading stay open.
        assert client.post("/ask", json={"question": REFERENCE_QUESTION}).status_code == 200
        assert client.get("/ask", params={"q": "Hetao"}).status_code == 200
        assert client.get("/health").status_code == 200
        assert client.get("/documents").status_code == 200
        assert client.get(f"/documents/{SEED_ID}").status_code == 200
        assert not compared, "asking must not need the token"
        wrong = [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer s3cret-token-and-more"},
                 {"Authorization": "Bearer "}, {"Authorization": "Basic s3cret-token"}, {"Authorization": "s3cret-token"},
                 {"X-API-Token": "s3cret-toke"}, {"Authorization": b"Bearer \xff\xfe\xfd"}, {"X-API-Token": b"\xc3\x28"}]
        for headers in wrong:
            for response in (client.post("/documents", files=upload, headers=headers),
                             client.post("/documents", headers=headers),  # 401 before any check of the body
                             client.delete(f"/documents/{SEED_ID}", headers=headers)):
                assert response.status_code == 401, (headers, response.text)
                assert error_problem(response) is None
        assert tree_digest(settings.docs_dir, settings.index_dir) == before
        assert compared and all(b == b"s3cret-token" for _, b in compared)
        for headers in ({"Authorization": "Bearer s3cret-token"}, {"X-API-Token": "s3cret-token"}):
            response = client.post("/documents", files=[("files", (f"ok{len(headers)}{len(compared)}.txt",
                                                                   NEW_ARTICLE.replace("May", f"May {len(compared)}").encode(),
                                                                   "text/plain"))], headers=headers)
            assert response.status_code == 202, response.text
            assert _wait_for_job(client, response.json()["job_id"])["status"] == "done"


def test_unexpected_errors_are_logged_but_not_shown(assistant: Assistant, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    secret = "/srv/secret/path/to/module.py line 42 password=hunter2"

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(secret)

    with TestClient(create_app(assistant), raise_server_exceptions=False) as client:
        monkeypatch.setattr(assistant, "ask", broken)
        with caplog.at_level(logging.ERROR, logger="qa.api"):
            response = client.post("/ask", json={"question": "area"})
        assert response.status_code == 500
        body = response.json()
        assert set(body) == {"error"} and body["error"]["code"] == "internal"
        assert "hunter2" not in response.text and "secret" not in response.text
        assert not any(marker in response.text for marker in TRACEBACK_MARKERS)
        logged = [r for r in caplog.records if r.name == "qa.api" and r.levelno >= logging.ERROR]
        assert logged and logged[0].exc_info and "POST /ask" in logged[0].getMessage()
        assert secret in caplog.text  # the server log has the details the response leaves out

        def corrupt(*args: Any, **kwargs: Any) -> Any:
            raise IndexCorrupt("index file vectors.npy is damaged (checksum mismatch); run `qa index --full` to rebuild it")

        monkeypatch.setattr(assistant, "ask", corrupt)
        response = client.post("/ask", json={"question": "area"})
        assert response.status_code == 503 and error_problem(response, range(503, 504)) is None
        assert response.json()["error"]["code"] == "index_corrupt" and "qa index --full" in response.text


def test_a_failed_index_update_is_logged_and_changes_nothing(client: TestClient, assistant: Assistant,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    settings = assistant.settings
    before = tree_digest(settings.docs_dir)
    reference = answer_key(client.post("/ask", json={"question": REFERENCE_QUESTION}).json())

    def disk_full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device: /srv/secret/index")

    monkeypatch.setattr("qa.store.make_faiss_index", disk_full)
    with caplog.at_level(logging.ERROR, logger="qa.api"):
        response = client.post("/documents", files=[("files", ("lighthouse.txt", NEW_ARTICLE.encode(), "text/plain"))])
        assert response.status_code == 202
        job = _wait_for_job(client, response.json()["job_id"])
    assert job["status"] == "failed" and job["message"] and "secret" not in job["message"]
    assert any(r.exc_info and "No space left" in caplog.text for r in caplog.records if r.name == "qa.api")
    assert tree_digest(settings.docs_dir) == before
    assert not list(settings.index_dir.glob(".tmp-*"))
    assert answer_key(client.post("/ask", json={"question": REFERENCE_QUESTION}).json()) == reference
    assert client.get("/health").json()["loaded"] is True
