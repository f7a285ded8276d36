"""Cleaning and metadata, on made-up articles that are not in seeds/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qa import documents
from qa.errors import DocumentError

from .conftest import SEEDS

PAGE = """Advertisement
World news
Sign up for our weekly newsletter
Harbour city opens floating solar farm
Published: 08:30, March 4, 2024 | Updated: 09:00, March 5, 2024
By Ana Lima in Lisbon
The city council switched on a 12-megawatt floating solar farm on Tuesday. Photo: Rui Costa
The farm covers 30 hectares of the old reservoir, officials said.
ALSO READ: Wind power record set in the north
The farm covers 30 hectares of the old reservoir, officials said
Engineers expect the panels to supply 4,000 homes (PHOTO PROVIDED TO THE DAILY).
Contact the writer at ana@dailyharbour.example
5
- Harbour city opens floating solar farm
- Rail strike called off
- Weather: rain expected
"""


def test_cleaning_drops_furniture_and_keeps_content() -> None:
    doc = documents.parse(PAGE.encode(), "solar", ".txt")
    paragraphs = doc.text.split("\n\n")
    for furniture in ("Advertisement", "newsletter", "ALSO READ", "Contact the writer", "Rail strike", "Photo: Rui",
                      "PHOTO PROVIDED"):
        assert furniture not in doc.text
    assert "5" not in paragraphs
    for content in ("switched on a 12-megawatt floating solar farm on Tuesday.", "supply 4,000 homes",
                    "By Ana Lima in Lisbon", "World news"):
        assert content in doc.text
    # The repeated paragraph (differing only in its final full stop) is kept once.
    assert doc.text.count("The farm covers 30 hectares") == 1


def test_metadata_from_the_text() -> None:
    doc = documents.parse(PAGE.encode(), "solar", ".txt")
    assert doc.title == "Harbour city opens floating solar farm"
    assert doc.published == "2024-03-04"
    assert doc.source == "dailyharbour.example"


@pytest.mark.parametrize(
    ("head", "source", "published"),
    [
        ("LISBON, Portugal, Feb. 2, 2022 /BusinessWire/ — A company announced a thing today.", "BusinessWire", "2022-02-02"),
        ("Harbour Gazette | 14 July 2021", "Harbour Gazette", "2021-07-14"),
        ("Posted 2020-01-31 by the desk", None, "2020-01-31"),
    ],
)
def test_datelines(head: str, source: str | None, published: str) -> None:
    text = f"A headline about the harbour city\n{head}\nThe body of the story has a sentence.\n"
    doc = documents.parse(text.encode(), "x", ".txt")
    assert doc.published == published
    assert doc.source == source


def test_title_falls_back_to_first_line_then_file_name() -> None:
    doc = documents.parse(b"Short.\nAnother sentence here.", "fallback", ".txt")
    assert doc.title == "Short."
    assert documents.parse(b"   \n\n...\nok.", "named", ".txt").title == "ok."


def test_unicode_and_whitespace_are_normalised() -> None:
    doc = documents.parse("Caf\u00e9\u00a0\u00a0culture   grows\u200b fast in the city\r\n\r\nSecond\tline here.".encode(), "u", ".txt")
    assert doc.text == "Café culture grows fast in the city\n\nSecond line here."


def test_sidecar_and_front_matter_override(tmp_path: Path) -> None:
    article = tmp_path / "story.md"
    article.write_text("---\ntitle: From front matter\ndate: 2019-05-06\n---\n# Heading line\n\nA [linked](http://x.example) word.\n")
    doc = documents.load(article)
    assert (doc.title, doc.published) == ("From front matter", "2019-05-06")
    assert "A linked word." in doc.text and "](" not in doc.text
    (tmp_path / "story.meta.json").write_text(json.dumps({"title": "From sidecar", "source": "Wire", "url": "https://e.example/a"}))
    doc = documents.load(article)
    assert (doc.title, doc.source, doc.url, doc.published) == ("From sidecar", "Wire", "https://e.example/a", "2019-05-06")


def test_html_is_reduced_to_text(tmp_path: Path) -> None:
    page = tmp_path / "page.html"
    page.write_text("<html><head><title>Bridge reopens</title><script>var x=1;</script></head>"
                    "<body><nav>Home | News</nav><p>The bridge reopened on Monday after repairs.</p></body></html>")
    doc = documents.load(page)
    assert doc.title == "Bridge reopens"
    assert "The bridge reopened on Monday after repairs." in doc.text
    assert "var x" not in doc.text and "Home | News" not in doc.text


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"", "empty"), (b"  \n ", "empty"), (b"abc\x00def", "binary"), (b"caf\xe9 au lait", "not UTF-8"),
     (b"Advertisement\n12345\n", "no article text")],
)
def test_bad_bytes_are_rejected_clearly(data: bytes, message: str) -> None:
    with pytest.raises(DocumentError, match=message):
        documents.parse(data, "bad", ".txt")


def test_content_hash_covers_sidecar(tmp_path: Path) -> None:
    article = tmp_path / "a.txt"
    article.write_text("A headline of some length\n\nBody sentence.")
    before = documents.file_hash(article)
    assert before == documents.load(article).content_hash
    (tmp_path / "a.meta.json").write_text('{"title": "T"}')
    assert documents.file_hash(article) != before


def test_seed_articles_load_with_metadata() -> None:
    folder = SEEDS
    docs = {d.doc_id: d for d in documents.load_all(documents.article_files(folder))}
    assert len(docs) == 5
    assert docs["001_75d156586012b08a"].published == "2023-09-01"
    assert docs["003_a706da511b167a58"].source == "China SCIO"
    assert docs["004_c96e7aec04f74565"].title == "Shenzhen shapes up tech zone into launchpad for HK firms"
    assert "\u00a0" not in "".join(d.text for d in docs.values())
