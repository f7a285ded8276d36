"""Helpers for the browser tests: the real `qa serve` in a subprocess, headless Chromium, the page."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Error, Locator, Page, expect

REPO = Path(__file__).resolve().parent.parent
SEEDS = REPO / "tests" / "seeds"  # the pinned seed articles (see conftest.py)
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
# Starting the server builds the index with the real model the first time: allow for a slow machine.
START_TIMEOUT = 120.0
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def chromium_path() -> str:
    """The system Chromium (scripts/setup.sh installs it); QA_CHROMIUM overrides."""
    for candidate in (os.environ.get("QA_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                      "/usr/bin/chromium"):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError("no Chromium found for the browser tests; run scripts/setup.sh test (or set QA_CHROMIUM)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A running `qa serve` on 127.0.0.1 with its own copy of the seed articles."""

    url: str
    docs: Path
    index: Path
    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    _files: list[Any] = field(default_factory=list)

    def logs(self) -> str:
        out = self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""
        err = self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
        return f"--- server stdout ---\n{out[-6000:]}\n--- server stderr ---\n{err[-6000:]}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        for handle in self._files:
            handle.close()
        self._files.clear()


def _wait_healthy(server: Server, timeout: float) -> str | None:
    """None once GET /health says an index is loaded; else why not."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            code = server.process.poll()
            if code is not None:
                return f"the server exited with code {code} before it was ready"
            try:
                response = client.get(server.url + "/health")
                if response.status_code == 200 and response.json().get("loaded"):
                    return None
                last = f"/health answered {response.status_code}: {response.text[:200]}"
            except httpx.TransportError as exc:
                last = f"/health unreachable: {exc!r}"
            time.sleep(0.25)  # polling interval, not a wait for anything in particular
    return f"not ready after {timeout:.0f}s ({last})"


def start_server(root: Path, settings: dict[str, str] | None = None) -> Server:
    """Copy the seeds, start the real server as a subprocess, and return once /health answers.

    `settings` are QA_* environment variables for the server (others are not passed on).
    """
    docs = root / "docs"
    docs.mkdir()
    for seed in sorted(SEEDS.glob("*.txt")):
        shutil.copy2(seed, docs / seed.name)
    index = root / "index"
    env = {key: value for key, value in os.environ.items() if not key.startswith("QA_")}
    env.update({"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(settings or {})})
    problem = "not started"
    for attempt in range(3):  # another process may take the free port before the server binds it
        port = free_port()
        stdout_path, stderr_path = root / f"server-{attempt}.out", root / f"server-{attempt}.err"
        out, err = stdout_path.open("wb"), stderr_path.open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "qa.cli", "serve", "--docs", str(docs), "--index", str(index), "--port", str(port)],
            cwd=REPO, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
        )
        server = Server(f"http://127.0.0.1:{port}", docs, index, process, stdout_path, stderr_path, [out, err])
        problem = _wait_healthy(server, START_TIMEOUT) or ""
        if not problem:
            return server
        server.stop()
        if "address already in use" not in server.logs().lower():
            break
    raise RuntimeError(f"the qa server did not start: {problem}\n{server.logs()}")


def wait_for_job(base_url: str, job_id: str, timeout: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < deadline:
            job = client.get(f"{base_url}/jobs/{job_id}").json()
            if job["status"] in ("done", "failed"):
                return dict(job)
            time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout:.0f}s")


# --- pages -------------------------------------------------------------------------------------

@dataclass
class PageProblems:
    """What a page reported that a test did not expect: script errors and CSP violations."""

    errors: list[str] = field(default_factory=list)

    def on_console(self, message: ConsoleMessage) -> None:
        text = message.text
        # A failed request is logged by the browser; the tests that cause one check the page instead.
        if message.type == "error" and not text.startswith("Failed to load resource"):
            self.errors.append(f"console: {text}")
        elif "Content Security Policy" in text:
            self.errors.append(f"console: {text}")

    def on_page_error(self, error: Error) -> None:
        self.errors.append(f"page error: {error}")


def open_page(browser: Browser, base_url: str, **context_options: Any) -> Iterator[Page]:
    """A fresh context and page on the chat page; fails the test if the page logged errors."""
    options: dict[str, Any] = {"viewport": DESKTOP, "reduced_motion": "reduce", "locale": "en-GB"}
    options.update(context_options)
    context: BrowserContext = browser.new_context(**options)
    context.set_default_timeout(20_000)
    page = context.new_page()
    problems = PageProblems()
    page.on("console", problems.on_console)
    page.on("pageerror", problems.on_page_error)
    try:
        page.goto(base_url + "/")
        # The article list has loaded once its count is shown.
        expect(page.get_by_test_id("doc-count")).not_to_be_empty()
        yield page
    finally:
        context.close()
    assert not problems.errors, "the page reported errors:\n" + "\n".join(problems.errors)


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path))
    return path


def ask(page: Page, question: str) -> Locator:
    """Type a question, press Enter, and return its turn once the reply has arrived."""
    turns = page.get_by_test_id("turn")
    before = turns.count()
    box = page.get_by_test_id("question-input")
    box.fill(question)
    box.press("Enter")
    expect(turns).to_have_count(before + 1)
    turn = turns.nth(before)
    wait_for_reply(turn)
    return turn


def wait_for_reply(turn: Locator, timeout: float = 30_000) -> None:
    expect(turn.locator("[data-testid=answer], [data-testid=no-answer], [data-testid=error]")).to_have_count(
        1, timeout=timeout)


def focused(page: Page) -> dict[str, Any]:
    """data-testid, id and tag of the focused element."""
    return dict(page.evaluate(
        "() => { const e = document.activeElement; return {testid: e && e.dataset ? e.dataset.testid || null : null,"
        " id: e ? e.id : null, tag: e ? e.tagName.toLowerCase() : null}; }"))


def tab_until(page: Page, predicate: Any, limit: int = 60, key: str = "Tab") -> dict[str, Any]:
    """Press Tab until the focused element matches, as a keyboard user would."""
    for _ in range(limit):
        page.keyboard.press(key)
        now = focused(page)
        if predicate(now):
            return now
    raise AssertionError(f"{key} never reached the wanted element in {limit} presses (last: {focused(page)})")
