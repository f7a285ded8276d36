"""The chat page's everyday features (issue 15) in headless Chromium against the real server: follow-ups,
searching one article or source, removing an article, what the file picker takes, no ranking scores,
titles and meta lines that look deliberate, and the layout at 1366x900 and 390x844."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page, Request, expect, sync_playwright

from .browser_support import (CHROMIUM_ARGS, Server, ask, chromium_path, open_page, screenshot, start_server,
                              wait_for_job)

pytestmark = pytest.mark.browser

DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
HETAO_QUESTION = "What is the total area of the Hetao cooperation zone?"
FOLLOW_UP = "How big is its Shenzhen part?"
SCIO_DOC = "003_a706da511b167a58"  # opens with a dateline and no headline: its title is its opening words
SCMP_DOC = "002_7e9bf9ad3c619b7e"  # states neither a source nor a date
# Two more articles, so the desktop list holds seven, as in the report.
EXTRA = [("harbour-notes.txt", b"The harbour authority met on Tuesday to discuss dredging the old channel.\n\n"
                               b"Dredging will start in spring and last nine weeks, the authority said.\n", "text/plain"),
         ("lighthouse.html", b"<html><head><title>Lighthouse reopens in Northcliff after repairs</title></head><body>"
                             b"<p>The Northcliff lighthouse reopened on Saturday after two years of repairs.</p>"
                             b"<p>Its keeper, Ada Morwen, has tended the light for thirty years.</p></body></html>",
          "text/html")]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    try:
        running = start_server(tmp_path_factory.mktemp("browser-everyday"))
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    job = httpx.post(running.url + "/documents", files=[("files", f) for f in EXTRA], timeout=30).json()
    if wait_for_job(running.url, job["job_id"])["status"] != "done":
        running.stop()
        pytest.fail(f"could not add the extra articles\n{running.logs()}", pytrace=False)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser, server: Server) -> Iterator[Page]:
    yield from open_page(browser, server.url, viewport=DESKTOP)


@pytest.fixture
def phone(browser: Browser, server: Server) -> Iterator[Page]:
    yield from open_page(browser, server.url, viewport=PHONE, is_mobile=True, has_touch=True)


def ask_bodies(page: Page) -> list[dict[str, Any]]:
    """Record the JSON body of every POST /ask the page sends."""
    bodies: list[dict[str, Any]] = []

    def record(request: Request) -> None:
        if request.method == "POST" and request.url.endswith("/ask"):
            bodies.append(json.loads(request.post_data or "{}"))

    page.on("request", record)
    return bodies


def fully_visible(page: Page, selector: str) -> bool:
    """Whether the element's box lies inside the viewport and inside every scrolling ancestor's box."""
    return bool(page.evaluate("""(selector) => {
        const node = document.querySelector(selector);
        if (!node) return false;
        const box = node.getBoundingClientRect();
        if (box.height === 0 || box.top < 0 || box.bottom > window.innerHeight + 0.5) return false;
        for (let up = node.parentElement; up; up = up.parentElement) {
            const style = getComputedStyle(up);
            if (!/(auto|scroll|hidden)/.test(style.overflowY)) continue;
            const outer = up.getBoundingClientRect();
            if (box.top < outer.top - 0.5 || box.bottom > outer.bottom + 0.5) return false;
        }
        return true;
    }""", selector))


# --- 6. the page sends the conversation -----------------------------------------------------------

def test_follow_up_sends_the_earlier_questions_and_says_how_it_was_taken(page: Page) -> None:
    bodies = ask_bodies(page)
    ask(page, HETAO_QUESTION)
    turn = ask(page, FOLLOW_UP)
    assert bodies[0]["history"] == []
    assert bodies[1]["history"] == [HETAO_QUESTION]
    expect(turn.get_by_test_id("resolved")).to_contain_text("Hetao cooperation zone's Shenzhen part")
    screenshot(page, "everyday-desktop-followup.png")
    # A new conversation stops sending the earlier questions.
    page.get_by_test_id("new-conversation").click()
    expect(page.get_by_test_id("conversation-break")).to_have_count(1)
    ask(page, "Who is the mayor of Shenzhen?")
    assert bodies[2]["history"] == []


# --- 8. search within one article or one source -------------------------------------------------

def test_restrict_to_one_article_then_one_source(page: Page) -> None:
    bodies = ask_bodies(page)
    page.get_by_test_id("scope-select").select_option(f"doc:{SCIO_DOC}")
    turn = ask(page, HETAO_QUESTION)
    assert bodies[-1]["filters"] == {"doc_ids": [SCIO_DOC]}
    cards = turn.get_by_test_id("card")
    expect(cards.first).to_be_visible()
    assert {cards.nth(i).get_attribute("data-doc-id") for i in range(cards.count())} == {SCIO_DOC}
    expect(turn.get_by_test_id("scope-note")).to_contain_text("Searched only in")

    page.get_by_test_id("scope-select").select_option("source:PRNewswire")
    turn = ask(page, HETAO_QUESTION)
    assert bodies[-1]["filters"] == {"sources": ["PRNewswire"]}
    expect(turn.get_by_test_id("card").first).to_contain_text("PRNewswire")
    page.get_by_test_id("scope-select").select_option("")
    ask(page, HETAO_QUESTION)
    assert "filters" not in bodies[-1]


# --- 4, 9, 10. file picker, no scores, titles and meta lines ----------------------------------------

def test_file_picker_says_what_it_takes(page: Page) -> None:
    expect(page.get_by_test_id("upload-label")).to_contain_text(".html")
    expect(page.get_by_test_id("upload-label")).to_contain_text(".pdf")
    accept = page.get_by_test_id("upload-input").get_attribute("accept") or ""
    assert {".txt", ".md", ".html", ".htm", ".pdf"} <= set(accept.split(","))


def test_no_scores_and_deliberate_titles_and_meta(page: Page) -> None:
    turn = ask(page, HETAO_QUESTION)
    expect(turn.get_by_test_id("card").first).to_be_visible()
    expect(turn).not_to_contain_text("score")
    untitled = page.locator(f'[data-testid=doc-item][data-doc-id="{SCIO_DOC}"]')
    expect(untitled.locator(".untitled-tag")).to_have_text("No headline")
    unstated = page.locator(f'[data-testid=doc-item][data-doc-id="{SCMP_DOC}"]')
    expect(unstated.locator(".doc-meta")).to_contain_text("source and date not stated")
    untitled.click()
    expect(page.get_by_test_id("panel-title").locator(".untitled-tag")).to_have_text("No headline")
    unstated.click()
    expect(page.get_by_test_id("panel-meta")).to_contain_text("source and date not stated")


# --- 5. removing an article -----------------------------------------------------------------------

def test_remove_an_article_after_confirming(page: Page, server: Server) -> None:
    # An article of its own to remove, so the other tests keep the seven.
    job = httpx.post(server.url + "/documents", timeout=30, files=[("files", (
        "ferry-timetable.txt", b"The island ferry adds a late crossing on Fridays from June.\n", "text/plain"))]).json()
    assert wait_for_job(server.url, job["job_id"])["status"] == "done"
    page.reload()
    item = page.locator("li.doc-item").filter(has=page.locator('[data-doc-id="ferry-timetable"]'))
    item.get_by_test_id("doc-remove").click()
    expect(item.get_by_test_id("remove-message")).to_contain_text("Remove")
    screenshot(page, "everyday-desktop-remove-confirm.png")
    item.get_by_test_id("remove-cancel").click()
    expect(item.get_by_test_id("remove-confirmation")).to_have_count(0)
    assert (server.docs / "ferry-timetable.txt").exists()

    item.get_by_test_id("doc-remove").click()
    item.get_by_test_id("remove-confirm").click()
    expect(page.locator('[data-testid=doc-item][data-doc-id="ferry-timetable"]')).to_have_count(0, timeout=60_000)
    assert not (server.docs / "ferry-timetable.txt").exists()
    expect(page.get_by_test_id("upload-status")).to_contain_text("Removed")


def test_removal_asks_for_the_token_when_the_server_wants_one(browser: Browser, tmp_path: Path) -> None:
    guarded = start_server(tmp_path, {"QA_API_TOKEN": "s3cret-token"})
    try:
        for page in open_page(browser, guarded.url, viewport=DESKTOP):
            item = page.locator("li.doc-item").filter(has=page.locator(f'[data-doc-id="{SCMP_DOC}"]'))
            item.get_by_test_id("doc-remove").click()
            item.get_by_test_id("remove-confirm").click()
            expect(item.get_by_test_id("remove-message")).to_contain_text("needs its API token")
            expect(page.get_by_test_id("token-field")).to_be_visible()
            page.get_by_test_id("token-input").fill("s3cret-token")
            item.get_by_test_id("remove-confirm").click()
            expect(page.locator(f'[data-testid=doc-item][data-doc-id="{SCMP_DOC}"]')).to_have_count(0, timeout=60_000)
    finally:
        guarded.stop()


# --- 11. layout at 1366x900 and 390x844 --------------------------------------------------------------

def test_desktop_layout(page: Page) -> None:
    assert page.get_by_test_id("doc-item").count() >= 7
    # The last article's meta line can be scrolled fully into view.
    page.get_by_test_id("doc-list").evaluate("list => { list.scrollTop = list.scrollHeight; }")
    assert fully_visible(page, "li.doc-item:last-child .doc-meta")
    screenshot(page, "everyday-desktop-list.png")
    # The viewer's legend stays in view once the highlighted passage is scrolled to.
    turn = ask(page, HETAO_QUESTION)
    turn.get_by_test_id("card").last.click()
    expect(page.get_by_test_id("panel-passage").first).to_be_visible()
    expect(page.get_by_test_id("panel-note")).to_contain_text("passage")
    # Wait until the highlighted passage has been scrolled into the panel's view (wherever it is in its article).
    page.wait_for_function("() => { const s = document.getElementById('panel-scroll'); "
                           "const m = s && s.querySelector('.hl-passage'); if (!m) return false; "
                           "const a = s.getBoundingClientRect(), b = m.getBoundingClientRect(); "
                           "return b.top >= a.top - 1 && b.top < a.bottom; }")
    assert fully_visible(page, "#panel-note")
    screenshot(page, "everyday-desktop-panel.png")


def test_phone_drawer_shows_the_file_button(phone: Page) -> None:
    phone.locator("#library-toggle").click()
    expect(phone.get_by_test_id("doc-list")).to_be_visible()
    assert fully_visible(phone, "#upload-input")
    assert fully_visible(phone, "#upload-button")
    screenshot(phone, "everyday-phone-drawer.png")
    phone.locator("#library-toggle").click()
    turn = ask(phone, HETAO_QUESTION)
    turn.get_by_test_id("card").first.click()
    expect(phone.get_by_test_id("panel-passage").first).to_be_visible()
    assert fully_visible(phone, "#panel-note")
    screenshot(phone, "everyday-phone-panel.png")
