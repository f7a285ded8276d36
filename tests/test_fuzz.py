"""Fuzzing: schemathesis against every endpoint of /openapi.json, and property tests for cleaning and chunking.

The API fuzzing runs in process against an app over a private copy of the seed articles, with
positive (schema-valid) and negative (schema-violating) requests for every operation: no 5xx,
every error in the one JSON shape, every success matching the documented response schema.
"""

from __future__ import annotations

import os
import re
import shutil
import unicodedata
from pathlib import Path
from typing import Any, Iterator

import hypothesis.errors
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,
                                               response_schema_conformance)

from qa import documents
from qa.api import create_app
from qa.assistant import Assistant
from qa.chunking import chunk_text, paragraph_spans, sentence_units
from qa.config import Settings
from qa.errors import DocumentError
from qa.indexing import split_document

from .conftest import SEEDS, make_settings
from .test_reliability import TRACEBACK_MARKERS, error_problem, report, tree_digest

EXAMPLES_PER_MODE = 40
# CI replays the same requests every run; QA_FUZZ_EXPLORE=1 draws new ones (and more of them).
EXPLORE = bool(os.environ.get("QA_FUZZ_EXPLORE"))
if EXPLORE:
    EXAMPLES_PER_MODE = 200


def _operations() -> list[str]:
    """Every operation the API documents, read from the schema the app itself generates."""
    app = create_app(Assistant(make_settings(Path("unused-docs"), Path("unused-index"))))
    spec = app.openapi()
    return [f"{method.upper()} {path}" for path, methods in spec["paths"].items() for method in methods]


OPERATIONS = _operations()


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Settings, dict[str, int]]]:
    """The loaded schema of an app over a private copy of the seeds, and a tally of requests."""
    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(SEEDS, root / "docs")
    helper = Assistant(make_settings(root / "docs", root / "index"))
    helper.build()
    app = create_app(helper)
    tally = {"requests": 0, "server_errors": 0, "client_errors": 0, "ok": 0}
    yield schemathesis.openapi.from_asgi("/openapi.json", app), helper.settings, tally
    app.state.jobs.shutdown()


def _check_response(case: Any, response: Any, mode: GenerationMode, tally: dict[str, int]) -> None:
    tally["requests"] += 1
    status = response.status_code
    tally["server_errors" if status >= 500 else "client_errors" if status >= 400 else "ok"] += 1
    checks = [not_a_server_error, response_schema_conformance, content_type_conformance]
    if mode == GenerationMode.NEGATIVE:
        checks.append(negative_data_rejection)
    case.validate_response(response, checks=checks)
    if status >= 400:
        problem = error_problem(response, range(400, 600))
        assert problem is None, f"{case.as_curl_command()}: {problem}"
    assert not any(marker in response.text for marker in TRACEBACK_MARKERS)


@pytest.mark.parametrize("operation", OPERATIONS)
def test_fuzz_every_endpoint(operation: str, fuzz_target: tuple[Any, Settings, dict[str, int]],
                             capsys: pytest.CaptureFixture[str]) -> None:
    schema, app_settings, tally = fuzz_target
    method, path = operation.split(" ", 1)
    api_operation = schema[path][method]
    before = tree_digest(app_settings.docs_dir) if method == "GET" else None
    ran = []
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        @settings(max_examples=EXAMPLES_PER_MODE, deadline=None, database=None, derandomize=not EXPLORE,
                  phases=[Phase.explicit, Phase.generate, Phase.shrink],
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                         HealthCheck.function_scoped_fixture])
        @given(case=api_operation.as_strategy(generation_mode=mode))
        def fuzz(case: Any) -> None:
            _check_response(case, case.call(), mode, tally)

        try:
            fuzz()
            ran.append(mode.value)
        except hypothesis.errors.Unsatisfiable:
            pass  # nothing about this operation can be made invalid (no parameters, or any string fits)
    assert ran, f"{operation}: no requests could be generated"
    if before is not None:
        assert tree_digest(app_settings.docs_dir) == before, f"{operation} changed the articles folder"
    if operation == OPERATIONS[-1]:
        report(capsys, "fuzz", {**tally, "operations": len(OPERATIONS)})
    assert tally["server_errors"] == 0


# --- property tests: cleaning -------------------------------------------------------------------

# Content lines are sentences of ordinary words; the first word is one no furniture rule starts with.
_WORD = st.text(alphabet="abcdefghijklmnopqrstuvwxyzäéñøßçğ", min_size=1, max_size=10)
_OPENERS = ["Officials", "Residents", "Engineers", "The", "Farmers", "Teachers", "Analysts", "Shenzhen", "Über", "Ça"]
_content_line = st.builds(
    lambda opener, words, digits, end: " ".join([opener, *words]) + (f" {digits}" if digits is not None else "") + end,
    st.sampled_from(_OPENERS), st.lists(_WORD, min_size=2, max_size=25), st.none() | st.integers(0, 10**6),
    st.sampled_from([".", "!", "?", ".”", "…"]),
)
_FURNITURE = [
    "Advertisement", "ADVERTISEMENT", "Sponsored content", "Share this article", "Print", "Read more",
    "Sign up for our daily newsletter", "Subscribe now", "Follow us on social media", "Click here to read more",
    "Download the app for breaking news", "Photo: Martin Chan", "Photos by Jane Doe", "File photo: Reuters",
    "ALSO READ: Rail strike called off", "Related articles: Weather", "See also - Markets today",
    "Contact the writer at ana@harbour.example", "desk@paper.example", "12345", "***", "— —", "• • •",
]
_NOISE_SPACE = st.sampled_from([" ", "  ", "\t", "\u00a0", " \u200b", "\u3000"])
_NEWLINE = st.sampled_from(["\n", "\r\n", "\r", "\n\n", "\n \n"])


@st.composite
def _article(draw: st.DrawFn) -> tuple[str, list[str]]:
    """Raw text mixing unique content lines with furniture and whitespace noise; and the content, cleaned."""
    content = draw(st.lists(_content_line, min_size=1, max_size=12,
                            unique_by=lambda line: re.sub(r"\W+", "", line.lower())))
    lines: list[str] = []
    for line in content:
        for _ in range(draw(st.integers(0, 2))):
            lines.append(draw(st.sampled_from(_FURNITURE)))
        words = line.split(" ")
        lines.append(draw(st.sampled_from(["", " ", "\t"])) + "".join(
            w + (draw(_NOISE_SPACE) if i < len(words) - 1 else "") for i, w in enumerate(words)))
    if draw(st.booleans()):  # a closing list of other headlines
        lines += [f"- {draw(st.sampled_from(_OPENERS))} headline {n}" for n in range(draw(st.integers(2, 4)))]
    raw = "".join(line + draw(_NEWLINE) for line in lines)
    expected = [" ".join(unicodedata.normalize("NFKC", line).split()) for line in content]
    return raw, expected


@settings(max_examples=200, deadline=None, database=None)
@given(_article())
def test_cleaning_loses_no_text_but_furniture(article: tuple[str, list[str]]) -> None:
    raw, expected = article
    assert documents.clean_lines(raw) == expected
    doc = documents.parse(raw.encode(), "a", ".txt")
    assert doc.text == "\n\n".join(expected)


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(max_size=400))
@example("Advertisement (photo x)")
@example("Share [Image: Reuters]")
def test_cleaning_is_idempotent(raw: str) -> None:
    """Cleaned text cleans to itself: no furniture is left that a second pass would remove."""
    once = documents.clean_lines(raw)
    assert documents.clean_lines("\n".join(once)) == once


_INVISIBLE_OR_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u200b\u200c\u200d\u2060\ufeff\u00ad\r]")


@pytest.mark.filterwarnings("ignore::bs4.MarkupResemblesLocatorWarning")
@settings(max_examples=250, deadline=None, database=None)
@given(st.one_of(st.binary(max_size=600), st.text(max_size=600).map(lambda t: t.encode("utf-8", "surrogatepass"))),
       st.sampled_from([".txt", ".md", ".html"]))
def test_parsing_any_bytes_gives_a_clean_article_or_a_clear_error(data: bytes, suffix: str) -> None:
    try:
        doc = documents.parse(data, "fuzzed", suffix)
    except DocumentError as exc:
        assert str(exc)
        return
    paragraphs = doc.text.split("\n\n")
    assert doc.text and all(paragraphs)
    for paragraph in paragraphs:
        assert "\n" not in paragraph and paragraph == paragraph.strip() and "  " not in paragraph
        assert not _INVISIBLE_OR_CONTROL.search(paragraph)
    assert doc.text == unicodedata.normalize("NFKC", doc.text)
    assert doc.title and len(doc.content_hash) == 64


# --- property tests: chunking a parsed article --------------------------------------------------

_TOKEN = st.one_of(
    _WORD, st.sampled_from(["Dr.", "Mr.", "U.S.", "e.g.", "J.", "No.", "3.89", "1,000", "“Yes,”", "(it", "said)",
                            "Sept.", "etc.", "…", "—", "https://example.com/a.b?c=d", "x" * 120, "深圳", "🚀"]),
)
_sentence = st.builds(lambda first, rest, end: " ".join([first, *rest]) + end,
                      st.sampled_from(_OPENERS + ["“Quoted", "(Aside"]), st.lists(_TOKEN, max_size=40),
                      st.sampled_from([".", "!", "?", "?!", "...", ".”", ".)", ""]))
_paragraph = st.lists(_sentence, min_size=1, max_size=8).map(" ".join)


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(_paragraph, min_size=1, max_size=8), st.integers(100, 900), st.integers(0, 3))
def test_passages_of_a_parsed_article_map_back_to_its_text(paragraphs: list[str], max_chars: int, overlap: int) -> None:
    doc = documents.parse("\n\n".join(paragraphs).encode(), "p", ".txt")
    text = doc.text
    # Sentences: in order, disjoint, inside one paragraph each, and together they hold every visible character.
    units = sentence_units(text, max_chars)
    paragraphs_at = paragraph_spans(text)
    covered = set()
    for (start, end, number), following in zip(units, units[1:] + [(len(text), len(text), -1)]):
        assert 0 <= start < end <= following[0]
        p_start, p_end = paragraphs_at[number]
        assert p_start <= start and end <= p_end and end - start <= max_chars
        covered.update(range(start, end))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())
    # Passages: offsets map back, bounded, ordered, each built of whole sentences.
    chunks = chunk_text(doc.doc_id, text, max_chars, max_chars // 3, overlap)
    assert [c.position for c in chunks] == list(range(len(chunks)))
    starts = [c.start for c in chunks]
    assert starts == sorted(starts)
    sentence_set = {(s, e) for s, e, _ in units}
    for chunk in chunks:
        assert text[chunk.start:chunk.end] == chunk.text and len(chunk.text) <= max_chars
        assert chunk.sentences[0][0] == chunk.start and chunk.sentences[-1][1] == chunk.end
        assert set(chunk.sentences) <= sentence_set
    assert {i for c in chunks for i in range(c.start, c.end)} >= {i for i, ch in enumerate(text) if not ch.isspace()}
    # What the index stores: each passage's sentence rows are exactly its sentences.
    settings_ = Settings(chunk_chars=max(max_chars, 100), chunk_min_chars=max(max_chars, 100) // 3, overlap=overlap)
    stored, spans, rows = split_document(doc, settings_)
    for chunk, (first, last) in zip(stored, rows):
        assert tuple(spans[first:last]) == chunk.sentences
