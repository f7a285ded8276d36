"""The chat page in headless Chromium against the real server, real model and the seed articles."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from .browser_support import (CHROMIUM_ARGS, PHONE, Server, ask, chromium_path, focused, open_page, screenshot,
                              start_server, tab_until, wait_for_job, wait_for_reply)

pytestmark = pytest.mark.browser

HETAO_QUESTION = "What is the total area of the Hetao cooperation zone?"
HETAO_TITLE = "Shenzhen and Hong Kong collaborate to build a world-class research hub"
HETAO_FACT = "3.89 square kilometers"
PARIS_QUESTION = "What is the price of a hotel room in Paris?"

# A made-up article with one distinctive fact, and characters outside the Basic Multilingual
# Plane before and inside the answer, so code-point offsets differ from UTF-16 indices.
PUFFIN_TITLE = "Glimmerford lighthouse keeper logs a record puffin arrival"
PUFFIN_ARTICLE = f"""{PUFFIN_TITLE}

Glimmerford, March 14, 2024 🌊🌊 The storm season ended early on the 𠀀 northern cape this year.

Lighthouse keeper Oriel Vantwest counted 4,217 puffins 🐧 landing on the Glimmerford cliffs on the morning of March 12, the largest arrival since the lighthouse log began in 1898.

Vantwest said the birds arrived in three waves, each larger than the last, and that the colony now fills both the eastern and the western ledges.

The harbour council plans to close the cliff path during the nesting weeks so that walkers do not disturb the birds.
"""
PUFFIN_QUESTION = "How many puffins did the Glimmerford lighthouse keeper count?"

# An article whose text and metadata are made of markup that must stay text.
XSS_TITLE = '<img src=x onerror="window.__xss=1"> Lantern <b>festival</b> report'
XSS_ARTICLE = f"""---
title: {XSS_TITLE}
url: javascript:window.__xss=1
---
Quiet harbour of Vellmoor hosts its lantern festival again

<script>window.__xss=1</script>

The Vellmoor lantern festival drew 6,352 visitors <img src=x onerror="window.__xss=1"> to the old harbour this spring.

Organisers published a <a href="javascript:window.__xss=1">programme link</a> for the evening parade along the quay.
"""
XSS_QUESTION = 'How many visitors did the <b>Vellmoor</b> lantern festival draw? <img src=x onerror="window.__xss=1">'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    try:
        running = start_server(tmp_path_factory.mktemp("browser"))
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
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
    yield from open_page(browser, server.url)


@pytest.fixture
def phone(browser: Browser, server: Server) -> Iterator[Page]:
    yield from open_page(browser, server.url, viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)


def text_of(page: Page, testid: str) -> str:
    return page.get_by_test_id(testid).first.inner_text()


# --- 1. a question, its answer, citation and passage cards -----------------------------------

def test_answer_with_citation_and_passage_cards(page: Page) -> None:
    turn = ask(page, HETAO_QUESTION)

    expect(turn.get_by_test_id("question-text")).to_have_text(HETAO_QUESTION)
    expect(turn.get_by_test_id("answer-text")).to_contain_text(HETAO_FACT)
    citation = turn.get_by_test_id("citation")
    expect(citation).to_have_text("1")
    expect(citation).to_have_attribute("aria-label", re.compile(re.escape(HETAO_TITLE)))

    cards = turn.get_by_test_id("card")
    expect(cards).to_have_count(5)
    first = cards.first
    expect(first.get_by_test_id("card-title")).to_contain_text(HETAO_TITLE)
    expect(first).to_contain_text(HETAO_FACT)
    expect(first).to_contain_text("PRNewswire")
    expect(first.locator('time[datetime="2023-09-01"]')).to_have_count(1)
    # Ranking scores are not comparable across questions: the page shows none (the API keeps them).
    expect(first.get_by_test_id("card-score")).to_have_count(0)
    expect(first).not_to_contain_text("score")
    # The answering sentence is highlighted inside its own card, exactly.
    expect(first.get_by_test_id("card-answer")).to_have_text(turn.get_by_test_id("answer-text").inner_text())
    expect(turn.get_by_test_id("card-answer")).to_have_count(1)
    # The reader's exact answer words are bold inside the sentence, in the reply and in the card.
    expect(turn.get_by_test_id("answer-span")).to_have_text("3.89 square kilometers")
    expect(first.get_by_test_id("card-answer").get_by_test_id("card-span")).to_have_text("3.89 square kilometers")
    assert turn.get_by_test_id("answer-span").evaluate("e => e.tagName + getComputedStyle(e).fontWeight") == "STRONG700"
    expect(page.get_by_test_id("searching")).to_have_count(0)
    expect(page.get_by_test_id("intro")).to_be_hidden()
    expect(page.get_by_test_id("announcer")).to_contain_text(HETAO_FACT)
    screenshot(page, "desktop-answer.png")


# --- 2. the source panel --------------------------------------------------------------------

def test_citation_and_card_open_the_source_panel(page: Page) -> None:
    turn = ask(page, HETAO_QUESTION)
    panel = page.get_by_test_id("source-panel")
    expect(panel).to_be_hidden()

    turn.get_by_test_id("citation").click()
    expect(panel).to_be_visible()
    expect(panel.get_by_test_id("panel-title")).to_have_text(HETAO_TITLE)
    strong = panel.get_by_test_id("panel-answer")
    expect(strong).to_have_count(1)
    expect(strong).to_contain_text(HETAO_FACT)
    expect(strong).to_have_text(turn.get_by_test_id("answer-text").inner_text())
    expect(strong).to_be_in_viewport()
    expect(panel.get_by_test_id("panel-passage").first).to_be_visible()
    expect(turn.get_by_test_id("card").first).to_have_class(re.compile(r"\bis-active\b"))
    screenshot(page, "desktop-panel.png")

    # Another card opens its own article: its passage highlighted, no answer sentence in it.
    second = turn.get_by_test_id("card").nth(1)
    second_doc = second.get_attribute("data-doc-id")
    second.click()
    expect(panel).to_have_attribute("data-doc-id", second_doc or "")
    expect(panel).to_have_attribute("data-state", "ready")
    expect(panel.get_by_test_id("panel-answer")).to_have_count(0)
    expect(panel.get_by_test_id("panel-passage").first).to_be_in_viewport()
    # The highlighted stretch of the article is exactly the card's passage (paragraph breaks aside).
    highlighted = " ".join(panel.get_by_test_id("panel-passage").all_inner_texts())
    assert " ".join(highlighted.split()) == " ".join(second.get_by_test_id("card-text").inner_text().split())

    page.get_by_test_id("panel-close").click()
    expect(panel).to_be_hidden()
    expect(turn.locator(".card.is-active")).to_have_count(0)

    # An article from the list opens without highlights.
    page.get_by_test_id("doc-item").filter(has_text=HETAO_TITLE).click()
    expect(panel).to_have_attribute("data-state", "ready")
    expect(panel.get_by_test_id("panel-body")).to_contain_text(HETAO_FACT)
    expect(panel.get_by_test_id("panel-passage")).to_have_count(0)


# --- 3. adding an article through the page ---------------------------------------------------

def test_upload_an_article_then_ask_about_it(page: Page, tmp_path: Path) -> None:
    article = tmp_path / "glimmerford_puffins.txt"
    article.write_text(PUFFIN_ARTICLE, encoding="utf-8")
    items = page.get_by_test_id("doc-item")
    new_item = page.locator('[data-testid=doc-item][data-doc-id="glimmerford_puffins"]')
    expect(new_item).to_have_count(0)
    count_before = items.count()

    page.get_by_test_id("upload-input").set_input_files(str(article))
    page.get_by_test_id("upload-button").click()
    status = page.get_by_test_id("upload-status")
    expect(status).to_have_attribute("data-state", "done", timeout=90_000)
    expect(status).to_contain_text("glimmerford_puffins.txt")
    expect(new_item).to_have_count(1)
    expect(new_item).to_contain_text(PUFFIN_TITLE)
    expect(items).to_have_count(count_before + 1)
    expect(page.get_by_test_id("doc-count")).to_have_text(str(count_before + 1))
    screenshot(page, "desktop-upload.png")

    turn = ask(page, PUFFIN_QUESTION)
    answer_text = turn.get_by_test_id("answer-text")
    expect(answer_text).to_contain_text("4,217 puffins")
    first = turn.get_by_test_id("card").first
    expect(first.get_by_test_id("card-title")).to_contain_text(PUFFIN_TITLE)
    # Offsets count code points: with emoji before it, the highlight is still exactly the sentence.
    sentence = answer_text.inner_text()
    assert "🐧" in sentence
    expect(first.get_by_test_id("card-answer")).to_have_text(sentence)
    turn.get_by_test_id("citation").click()
    strong = page.get_by_test_id("panel-answer")
    expect(strong).to_have_text(sentence)
    expect(strong).to_be_in_viewport()

    # A file the server refuses says why, inline.
    bad = tmp_path / "notes.pdf"
    bad.write_bytes(b"%PDF-1.4 not an article")
    page.get_by_test_id("panel-close").click()
    page.get_by_test_id("upload-input").set_input_files(str(bad))
    page.get_by_test_id("upload-button").click()
    expect(status).to_have_attribute("data-state", "error")
    expect(status).to_contain_text("Could not add notes.pdf")
    expect(status).to_contain_text("not a readable PDF")  # the server's reason follows


def test_a_server_with_an_api_token_asks_for_it_on_upload(browser: Browser, tmp_path: Path) -> None:
    (tmp_path / "guarded").mkdir()
    try:
        guarded = start_server(tmp_path / "guarded", {"QA_API_TOKEN": "harbour-key-7"})
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        article = tmp_path / "glimmerford_puffins.txt"
        article.write_text(PUFFIN_ARTICLE, encoding="utf-8")
        with contextlib.contextmanager(open_page)(browser, guarded.url) as page:
            field, status = page.get_by_test_id("token-field"), page.get_by_test_id("upload-status")
            expect(field).to_be_hidden()
            page.get_by_test_id("upload-input").set_input_files(str(article))
            page.get_by_test_id("upload-button").click()
            expect(status).to_have_attribute("data-state", "error")
            expect(status).to_contain_text("needs its API token")
            expect(field).to_be_visible()
            expect(page.get_by_test_id("token-input")).to_be_focused()
            page.get_by_test_id("token-input").fill("wrong-key")
            page.get_by_test_id("upload-button").click()
            expect(status).to_contain_text("did not accept that API token")
            page.get_by_test_id("token-input").fill("harbour-key-7")
            page.get_by_test_id("upload-button").click()
            expect(status).to_have_attribute("data-state", "done", timeout=90_000)
            expect(page.locator('[data-testid=doc-item][data-doc-id="glimmerford_puffins"]')).to_have_count(1)
    finally:
        guarded.stop()


# --- 4. nothing answers ------------------------------------------------------------------------

def canned_passage(rank: int, title: str, text: str) -> dict[str, Any]:
    return {"rank": rank, "text": text, "score": 0.01 / rank, "doc_id": f"canned_{rank}", "title": title,
            "source": "Canned Wire", "published": "2024-02-29", "url": None, "position": 0, "start": 0,
            "end": len(text), "scores": {"dense": 0.2, "lexical": 1.5, "fused": 0.01 / rank}}


def test_unanswerable_question_says_so_and_lists_closest_passages(page: Page) -> None:
    turn = ask(page, PARIS_QUESTION)
    expect(turn.get_by_test_id("no-answer")).to_contain_text("Nothing in the articles answers this question")
    expect(turn.get_by_test_id("answer")).to_have_count(0)
    expect(turn.get_by_test_id("citation")).to_have_count(0)
    expect(turn.get_by_test_id("card")).to_have_count(5)
    expect(turn.get_by_test_id("card-answer")).to_have_count(0)
    expect(turn).to_contain_text("Closest passages")
    screenshot(page, "desktop-no-answer.png")

    # The same behaviour from a canned reply, independent of the model's scores.
    canned = {
        "question": "canned", "answer": None, "took_ms": 3.2, "mode": "hybrid", "index_version": "v-test",
        "passages": [canned_passage(1, "First canned title", "Some nearby text."),
                     canned_passage(2, "Second canned title", "More nearby text.")],
    }
    page.route("**/ask", lambda route: route.fulfill(status=200, content_type="application/json",
                                                     body=json.dumps(canned)))
    turn = ask(page, "Anything at all?")
    expect(turn.get_by_test_id("no-answer")).to_be_visible()
    expect(turn.get_by_test_id("card-title")).to_have_count(2)
    expect(turn.get_by_test_id("card-title").nth(0)).to_contain_text("First canned title")
    expect(turn.get_by_test_id("card-title").nth(1)).to_contain_text("Second canned title")
    # The earlier turn is still there.
    expect(page.get_by_test_id("turn")).to_have_count(2)


# --- 5. phone width ----------------------------------------------------------------------------

def test_phone_layout_and_full_screen_panel(phone: Page) -> None:
    page = phone
    assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
    # The article list folds away behind a toggle.
    toggle = page.locator("#library-toggle")
    expect(toggle).to_be_visible()
    expect(page.get_by_test_id("doc-list")).to_be_hidden()
    toggle.click()
    expect(page.get_by_test_id("doc-list")).to_be_visible()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    toggle.click()
    expect(page.get_by_test_id("doc-list")).to_be_hidden()

    turn = ask(page, HETAO_QUESTION)
    expect(turn.get_by_test_id("answer-text")).to_contain_text(HETAO_FACT)
    for testid in ("answer", "card"):
        box = turn.get_by_test_id(testid).first.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"] + 0.5, (testid, box)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
    screenshot(page, "phone-answer.png")

    citation = turn.get_by_test_id("citation")
    citation.click()
    panel = page.get_by_test_id("source-panel")
    expect(panel).to_be_visible()
    expect(panel.get_by_test_id("panel-answer")).to_be_in_viewport()
    box = panel.bounding_box()
    assert box is not None
    assert (round(box["x"]), round(box["y"])) == (0, 0)
    assert (round(box["width"]), round(box["height"])) == (PHONE["width"], PHONE["height"])
    expect(page.get_by_test_id("panel-close")).to_be_in_viewport()
    expect(page.locator("#chat")).to_have_attribute("inert", "")
    expect(panel).to_have_attribute("aria-modal", "true")
    screenshot(page, "phone-panel.png")

    page.keyboard.press("Escape")
    expect(panel).to_be_hidden()
    expect(page.locator("#chat")).not_to_have_attribute("inert", "")
    expect(citation).to_be_focused()

    turn.get_by_test_id("card").first.click()
    expect(panel).to_be_visible()
    page.get_by_test_id("panel-close").click()
    expect(panel).to_be_hidden()


# --- 6. keyboard only --------------------------------------------------------------------------

def test_keyboard_only(page: Page) -> None:
    tab_until(page, lambda f: f["id"] == "question")
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    expect(page.get_by_test_id("question-input")).to_have_value("first line\nsecond line")
    expect(page.get_by_test_id("turn")).to_have_count(0)
    page.keyboard.press("Control+A")
    page.keyboard.press("Backspace")

    page.keyboard.type(HETAO_QUESTION)
    page.keyboard.press("Enter")
    turn = page.get_by_test_id("turn").first
    wait_for_reply(turn)
    expect(turn.get_by_test_id("answer-text")).to_contain_text(HETAO_FACT)
    expect(page.get_by_test_id("question-input")).to_be_focused()
    expect(page.get_by_test_id("question-input")).to_have_value("")

    tab_until(page, lambda f: f["testid"] == "card")
    card = page.locator(".card:focus")
    outline = card.evaluate("e => getComputedStyle(e).outlineStyle")
    assert outline not in ("", "none")
    screenshot(page, "desktop-keyboard.png")
    rank = card.get_attribute("data-rank")

    page.keyboard.press("Enter")
    panel = page.get_by_test_id("source-panel")
    expect(panel).to_be_visible()
    expect(page.get_by_test_id("panel-close")).to_be_focused()
    expect(panel.get_by_test_id("panel-passage").first).to_be_in_viewport()
    page.keyboard.press("Escape")
    expect(panel).to_be_hidden()
    assert focused(page)["testid"] == "card"
    expect(page.locator(".card:focus")).to_have_attribute("data-rank", rank or "")

    # Space works on a card too, and the close button answers Enter.
    page.keyboard.press(" ")
    expect(panel).to_be_visible()
    page.keyboard.press("Enter")
    expect(panel).to_be_hidden()

    # The citation is a button: Shift+Tab back to it from the first card and press Enter.
    turn.get_by_test_id("card").first.focus()
    tab_until(page, lambda f: f["testid"] == "citation", key="Shift+Tab")
    page.keyboard.press("Enter")
    expect(panel.get_by_test_id("panel-answer")).to_be_in_viewport()
    page.keyboard.press("Escape")
    expect(turn.get_by_test_id("citation")).to_be_focused()


# --- 7. markup in articles and questions stays text ---------------------------------------------

def test_markup_in_articles_and_questions_is_shown_as_text(page: Page, server: Server) -> None:
    response = httpx.post(server.url + "/documents", timeout=30,
                          files=[("files", ("vellmoor_lanterns.txt", XSS_ARTICLE.encode(), "text/plain"))])
    assert response.status_code == 202, response.text
    assert wait_for_job(server.url, response.json()["job_id"])["status"] == "done"

    page.reload()
    item = page.locator('[data-testid=doc-item][data-doc-id="vellmoor_lanterns"]')
    expect(item).to_contain_text(XSS_TITLE)

    turn = ask(page, XSS_QUESTION)
    expect(turn.get_by_test_id("question-text")).to_have_text(XSS_QUESTION)
    expect(turn.get_by_test_id("answer-text")).to_contain_text('6,352 visitors <img src=x onerror="window.__xss=1">')
    expect(turn.get_by_test_id("card").first.get_by_test_id("card-title")).to_contain_text(XSS_TITLE)

    turn.get_by_test_id("citation").click()
    panel = page.get_by_test_id("source-panel")
    expect(panel.get_by_test_id("panel-title")).to_have_text(XSS_TITLE)
    body = panel.get_by_test_id("panel-body")
    expect(body).to_contain_text("<script>window.__xss=1</script>")
    expect(body).to_contain_text('<a href="javascript:window.__xss=1">programme link</a>')
    # The front matter's javascript: address is not an http(s) url: it is dropped, so nothing links to it.
    expect(panel.get_by_test_id("panel-meta")).not_to_contain_text("javascript:")
    assert page.locator('a[href^="javascript"]').count() == 0
    screenshot(page, "desktop-markup.png")

    assert page.evaluate("() => window.__xss") is None
    assert page.locator("img").count() == 0
    assert page.locator("script").count() == 1
    assert page.locator("[onerror], [onclick], [onload]").count() == 0
    assert page.locator('a[href^="javascript:" i]').count() == 0
    assert page.locator("b").count() == 0


# --- 8. errors appear inline; the conversation is kept ---------------------------------------------

def test_errors_are_shown_inline_and_the_conversation_stays(page: Page) -> None:
    first = ask(page, HETAO_QUESTION)
    expect(first.get_by_test_id("answer-text")).to_contain_text(HETAO_FACT)

    held: list[Route] = []
    page.route("**/ask", lambda route: held.append(route))
    page.get_by_test_id("question-input").fill("Who runs the science park?")
    page.get_by_test_id("question-input").press("Enter")
    second = page.get_by_test_id("turn").nth(1)
    expect(second.get_by_test_id("searching")).to_be_visible()
    expect(page.get_by_test_id("ask-button")).to_be_disabled()
    screenshot(page, "desktop-searching.png")
    assert len(held) == 1
    held.pop().fulfill(status=503, content_type="application/json",
                       body=json.dumps({"error": {"code": "no_index", "message": "no index is loaded; run `qa index`"}}))
    expect(second.get_by_test_id("error-text")).to_have_text("no index is loaded; run `qa index`")
    expect(second.get_by_test_id("searching")).to_have_count(0)
    expect(page.get_by_test_id("ask-button")).to_be_enabled()

    page.unroute("**/ask")
    page.route("**/ask", lambda route: route.abort("connectionrefused"))
    third = ask(page, "Does the network work?")
    expect(third.get_by_test_id("error-text")).to_contain_text("Could not reach the server")
    screenshot(page, "desktop-errors.png")

    # Retrying once the server is back fills the same turn.
    page.unroute("**/ask")
    third.get_by_test_id("retry").click()
    expect(third.get_by_test_id("no-answer").or_(third.get_by_test_id("answer"))).to_be_visible()
    expect(third.get_by_test_id("error")).to_have_count(0)

    turns = page.get_by_test_id("turn")
    expect(turns).to_have_count(3)
    expect(first.get_by_test_id("answer-text")).to_contain_text(HETAO_FACT)
    expect(second.get_by_test_id("error-text")).to_be_visible()
