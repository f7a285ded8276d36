"""Articles: loading, cleaning, metadata, stable ids and content hashes."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import unicodedata
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import urlsplit

from .errors import DocumentError

SUFFIXES = (".txt", ".md", ".html", ".htm", ".pdf")
META_SUFFIX = ".meta.json"
# Bumped whenever cleaning changes what text or metadata an article yields, so old indexes are rebuilt.
# 3: the url comes only from metadata or a labelled line; front matter and sidecar values are checked.
CLEANING_VERSION = 3
# Seconds one article may take to be read and cleaned. Every pattern here runs in time linear in the
# text (a 1 MB article takes well under a second), so only an article built to be slow meets this.
PARSE_SECONDS = 10.0

log = logging.getLogger("qa.documents")


@dataclass(frozen=True)
class Document:
    """One cleaned article; `text` is what passages and offsets refer to."""

    doc_id: str
    title: str
    source: str | None
    published: str | None  # ISO date, YYYY-MM-DD
    url: str | None
    text: str  # paragraphs separated by a blank line
    content_hash: str  # of the raw file and its sidecar, so either changing re-indexes


# --- furniture: lines that belong to the page, not to the article --------------------------

# Whole lines that are page furniture whatever their length.
_FURNITURE_LINE = re.compile(
    r"""^(?:
        advertisement|advertising|sponsored(?:\ content)?|promoted|
        learn\ more|read\ more|show\ more|see\ more|pdf\ view|print|share|share\ this(?:\ article)?|
        (?:also\ read|read\ also|read\ more|related(?:\ articles?|\ stories)?|see\ also|more\ on\ this)\s*[:|\-–—].*|
        (?:contact|email|e-mail|write\ to)\b.*@.*|
        [\w.+-]+@[\w-]+(?:\.[\w-]+)+
    )$""",
    re.IGNORECASE | re.VERBOSE,
)
# Short lines that are furniture: photo credits and prompts to subscribe, sign up or click.
_SHORT_FURNITURE = re.compile(
    r"""^(?:
        (?:photo|photograph|image|picture|file\ photo)s?\s*(?::|by\b|credit\b).*|
        (?:get\ more\ with|sign\ up|subscribe|download\ (?:the|our)\ app|follow\ us|(?:click|tap)\ here)\b.*
    )$""",
    re.IGNORECASE | re.VERBOSE,
)
# A short line with no sentence ending that talks about newsletters or feeds is a prompt too.
_PROMPT_WORDS = re.compile(r"\b(?:newsletter|news feed|inbox)\b", re.IGNORECASE)
_SHORT = 120
_ONLY_SYMBOLS = re.compile(r"^[\W\d_]*$")
_BULLET = re.compile(r"^[-*•·▪◦]\s+")
# Credits inside a caption: "... zone. Photo: Martin Chan", "(PHOTO PROVIDED TO CHINA DAILY)".
_INLINE_CREDIT = [
    re.compile(r"\s*\((?:photo|image|picture)s?\b[^)]{0,80}\)", re.IGNORECASE),
    re.compile(r"\s*\[(?:photo|image|picture)s?\b[^\]]{0,80}\]", re.IGNORECASE),
    re.compile(r"(?<=[.!?\"”])\s*(?:photo|photograph|image|picture)s?\s*:\s*[^.!?]{1,60}$", re.IGNORECASE),
]
_INVISIBLE = re.compile(r"[\u200b\u200c\u200d\u2060\ufeff\u00ad]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _is_furniture(line: str) -> bool:
    if _ONLY_SYMBOLS.match(line) or _FURNITURE_LINE.match(line):
        return True
    if len(line) > _SHORT:
        return False
    if _SHORT_FURNITURE.match(line):
        return True
    return bool(_PROMPT_WORDS.search(line)) and not line.endswith((".", "!", "?", "\"", "”"))


def _strip_credits(line: str) -> str:
    for pattern in _INLINE_CREDIT:
        line = pattern.sub("", line)
    return line.strip()


def _dedupe_key(line: str) -> str:
    return re.sub(r"\W+", "", line.lower())


def _no_check() -> None:
    return None


def clean_lines(raw: str, check: Callable[[], None] = _no_check) -> list[str]:
    """Normalise Unicode and whitespace; return the article's paragraphs without furniture.

    `check` is called every few hundred lines; it raises to stop an article that takes too long.
    """
    text = unicodedata.normalize("NFKC", raw.replace("\r\n", "\n").replace("\r", "\n"))
    text = _INVISIBLE.sub("", text)
    text = _CONTROL.sub(" ", text.replace("\t", " "))
    lines = [" ".join(line.split()) for line in text.split("\n")]
    kept = []
    for number, line in enumerate(lines):
        if number % 256 == 0:
            check()
        if line and not _is_furniture(line):
            kept.append(_strip_credits(line))
    check()
    kept = [line for line in kept if line and not _is_furniture(line)]
    # A trailing run of bullet lines is a list of other headlines, not the article.
    end = len(kept)
    while end > 0 and _BULLET.match(kept[end - 1]):
        end -= 1
    if len(kept) - end >= 2:
        kept = kept[:end]
    seen: set[str] = set()
    paragraphs = []
    for line in kept:
        key = _dedupe_key(line)
        # Short lines (subheadings, bylines) may legitimately repeat; long ones are duplicates.
        if len(key) >= 40 and key in seen:
            continue
        seen.add(key)
        paragraphs.append(line)
    return paragraphs


# --- metadata ------------------------------------------------------------------------------

_MONTHS = {
    "jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6,
    "jul": 7, "aug": 8, "sep": 9, "oct": 10, "nov": 11, "dec": 12,
}
_MONTH = r"(?P<month>Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sept?(?:ember)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?"
_DATE_PATTERNS = [
    re.compile(_MONTH + r"\s+(?P<day>\d{1,2}),?\s+(?P<year>\d{4})", re.IGNORECASE),
    re.compile(r"(?P<day>\d{1,2})\s+" + _MONTH + r",?\s+(?P<year>\d{4})", re.IGNORECASE),
    re.compile(r"(?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})"),
]
# "SHENZHEN, China, Sept. 1, 2023 /PRNewswire/" names its wire service between slashes.
_WIRE = re.compile(r"\d{4}\s*/\s*(?P<source>[A-Za-z][\w .&-]{1,40}?)\s*/")
# "China SCIO | September 6, 2023": a publisher before a date.
_SOURCE_BAR = re.compile(r"^(?P<source>[^|]{2,40}?)\s*\|\s*\S")
# The local part is checked by a one-character look-behind rather than matched: "[\w.+-]+@" tried at
# every position of a long word with no "@" took time quadratic in its length.
_EMAIL_DOMAIN = re.compile(r"(?<=[\w.+-])@(?P<domain>[\w-]+(?:\.[\w-]+)+)")
# A line that names the article's own address: "URL: https://...", "Canonical link: https://...".
# A link anywhere else in the text (a "read more" line, a link in a sentence) may point anywhere.
_CANONICAL = re.compile(
    r"(?:canonical|permalink|original(?: article| story)?|source|url|link)(?: url| link)?\s?:\s?(?P<url>https?://\S+)",
    re.IGNORECASE,
)
_HEAD_LINES = 6


def find_date(line: str) -> tuple[str, re.Match[str]] | None:
    """The first plausible calendar date in a line, as ISO text, with its match."""
    best: tuple[str, re.Match[str]] | None = None
    for pattern in _DATE_PATTERNS:
        for match in pattern.finditer(line):
            month_text = match.group("month")
            month = int(month_text) if month_text.isdigit() else _MONTHS[month_text[:3].lower()]
            try:
                iso = date(int(match.group("year")), month, int(match.group("day"))).isoformat()
            except ValueError:
                continue
            if best is None or match.start() < best[1].start():
                best = (iso, match)
            break
    return best


def _is_metadata_line(line: str) -> bool:
    found = find_date(line)
    # A dateline is mostly date: "China SCIO | September 6, 2023", "Published: 10:15, ...".
    return bool(found) and (len(line) < 80 or "|" in line or line.lower().startswith(("published", "updated")))


def extract_metadata(paragraphs: list[str], raw: str) -> dict[str, str | None]:
    """Title, source, date and url where the text states them; None where it does not."""
    head = paragraphs[:_HEAD_LINES]
    published = source = None
    for line in head:
        found = find_date(line)
        if found and published is None:
            published = found[0]
            wire = _WIRE.search(line[found[1].start():])
            bar = _SOURCE_BAR.match(line)
            if wire:
                source = wire.group("source")
            elif bar and found[1].start() > bar.end() - 2 and not find_date(bar.group("source")):
                source = bar.group("source")
    if source is None:
        emails = _EMAIL_DOMAIN.findall(raw)
        if emails:
            source = emails[-1]
    return {
        "title": _guess_title(paragraphs),
        "source": source,
        "published": published,
        "url": _canonical_url(paragraphs),
    }


def _canonical_url(paragraphs: list[str]) -> str | None:
    """The address a kept line gives as the article's own ("URL: https://..."), if it is a web address."""
    for line in paragraphs:
        match = _CANONICAL.fullmatch(line) if len(line) <= _MAX_URL + 40 else None
        if match and _web_address(match.group("url")):
            return match.group("url")
    return None


def _guess_title(paragraphs: list[str]) -> str:
    """A headline-like line near the top; else the first line's opening words."""
    for line in paragraphs[:8]:
        words = line.split()
        if (
            4 <= len(words) <= 30
            and not line.endswith((".", "!", "?", ":", ";", ",", "\"", "”"))
            and not _is_metadata_line(line)
            and not line.lower().startswith("by ")
            and not _BULLET.match(line)
        ):
            return line.lstrip("# ").strip()
    for line in paragraphs:
        if not _is_metadata_line(line):
            first = re.split(r"(?<=[.!?])\s", line, maxsplit=1)[0]
            return first if len(first) <= 120 else first[:117].rsplit(" ", 1)[0] + "…"
    return ""


# --- files ---------------------------------------------------------------------------------

_FRONT_MATTER = re.compile(r"\A---\s*\n(?P<body>.*?)\n---\s*\n", re.DOTALL)
_META_KEYS = {"title": "title", "source": "source", "publisher": "source", "date": "published",
              "published": "published", "url": "url"}


def _front_matter(raw: str) -> tuple[dict[str, object], str]:
    match = _FRONT_MATTER.match(raw)
    if not match:
        return {}, raw
    meta: dict[str, object] = {}
    for line in match.group("body").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in _META_KEYS:
            meta[_META_KEYS[key.strip().lower()]] = value.strip().strip("\"'")
    return meta, raw[match.end():]


# --- checking the metadata a file states ---------------------------------------------------

_MAX_URL = 2000
_MAX_LABEL = {"title": 300, "source": 200}
_ISO_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:[T ][0-9:.+\-Z]{1,40})?")
_EXPECTED = {
    "published": "expected an ISO date, YYYY-MM-DD",
    "url": f"expected an http:// or https:// address of at most {_MAX_URL} characters",
    "title": f"expected text of at most {_MAX_LABEL['title']} characters",
    "source": f"expected text of at most {_MAX_LABEL['source']} characters",
}


def _web_address(value: str) -> bool:
    """An absolute http(s) address with a host, and no space or control character in it."""
    if len(value) > _MAX_URL or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in value):
        return False
    try:
        parts = urlsplit(value)
        return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return False


def _checked_field(field: str, value: object) -> str | None:
    """A front matter or sidecar value as the API documents it, or None when it is not one."""
    if not isinstance(value, str):
        return None  # lists, objects, numbers and booleans are not titles, dates or addresses
    text = " ".join(_CONTROL.sub(" ", _INVISIBLE.sub("", value)).split())
    if not text:
        return None
    if field == "published":
        match = _ISO_DATE.fullmatch(text)
        if not match:
            return None
        try:
            return date(int(match.group(1)), int(match.group(2)), int(match.group(3))).isoformat()
        except ValueError:
            return None
    if field == "url":
        return text if _web_address(text) else None
    return text if len(text) <= _MAX_LABEL[field] else None


def checked_metadata(stated: dict[str, object], name: str) -> dict[str, str]:
    """The stated fields that hold what the API promises (an ISO date, an http(s) address, short text).

    A field that does not is dropped with a logged message, and what the text itself says is used.
    """
    kept = {}
    for field, value in stated.items():
        checked = _checked_field(field, value)
        if checked is None:
            shown = value if isinstance(value, str) else type(value).__name__
            log.warning("%s: ignored its %s %.80r: %s", name, field, shown, _EXPECTED[field])
        else:
            kept[field] = checked
    return kept


# --- markdown --------------------------------------------------------------------------------

# Link text stops at any bracket and the address at any bracket or parenthesis: each match attempt
# then reads only up to the next one, so a text of unclosed "[a[a[a..." costs linear time, not quadratic.
_MD_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+", re.MULTILINE)
_MD_IMAGE = re.compile(r"!\[([^\[\]]*)\]\([^()\[\]]*\)")
_MD_LINK = re.compile(r"\[([^\[\]]+)\]\([^()\[\]]*\)")
_MD_EMPHASIS = re.compile(r"\*\*|__|`")


def _markdown_to_text(raw: str) -> str:
    """Drop the markdown syntax a reader would not see; keep every word."""
    text = _MD_HEADING.sub("", raw)
    text = _MD_IMAGE.sub(r"\1", text)
    text = _MD_LINK.sub(r"\1", text)
    return _MD_EMPHASIS.sub("", text)


# A page is read by a small scanner, not html.parser (which BeautifulSoup used here): the standard
# library's parser reads the rest of the page again at every unfinished tag ("<a<a<a...", '<p x="<p x="'),
# so 80 KB of them took 5 to 17 s. Each step here moves past what it read, in time linear in the page.
# The name's look-ahead stops the pattern from retrying shorter names when a tag is never closed.
_HTML_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9:-]*)(?![A-Za-z0-9:-])([^<>]*)>")
_HTML_CODE = ("script", "style")  # their content is code, up to their closing tag
_HTML_FURNITURE = frozenset({"noscript", "nav", "footer", "header", "aside", "form"})  # dropped with all they hold


def _html_to_text(raw: str) -> str:
    """The page's text, a line per run of text between tags, its <title> first; without scripts,
    styles, navigation, headers, footers, asides or forms."""
    import html

    lower = raw.lower()
    runs: list[str] = []
    title: list[str] | None = None  # the <title>'s runs while it is open
    title_text = ""
    furniture = 0  # how deep inside furniture elements the scanner is
    at = start = 0  # scanning position; start of the text run not yet kept
    end = len(raw)
    while at < end:
        lt = raw.find("<", at)
        if lt < 0:
            break
        tag = _HTML_TAG.match(raw, lt)
        if tag is None and not raw.startswith(("<!", "<?"), lt):
            at = lt + 1  # a "<" that opens nothing is text
            continue
        if not furniture:
            (title if title is not None else runs).append(raw[start:lt])
        if tag is None:  # a comment, doctype or processing instruction: skipped; unclosed, it ends the page
            close = raw.find("-->", lt + 4) + 3 if raw.startswith("<!--", lt) else raw.find(">", lt + 2) + 1
            at = start = close if close > lt else end
            continue
        closing, name = tag.group(1) == "/", tag.group(2).lower()
        at = start = tag.end()
        if name in _HTML_CODE and not closing:
            close = lower.find("</" + name, at)
            at = start = (raw.find(">", close) + 1 or end) if close >= 0 else end
        elif name in _HTML_FURNITURE and not tag.group(3).rstrip().endswith("/"):
            furniture = max(0, furniture + (-1 if closing else 1))
        elif name == "title" and not furniture:
            if not closing and title is None and not title_text:
                title = []
            elif closing and title is not None:
                title_text = " ".join(html.unescape(" ".join(title)).split())
                title = None
    if not furniture:
        (title if title is not None else runs).append(raw[start:])
    body = html.unescape("\n".join(runs))
    return f"{title_text}\n{body}" if title_text else body


# A PDF line that ends a paragraph: it closes a sentence or is short (a heading); others are wrapped lines.
_PDF_LINE_END = re.compile(r"[.!?:;\"”’)]$")


def _pdf_pages(data: bytes, name: str) -> list[str]:
    """The text of each page of a PDF, as pypdf extracts it."""
    import io

    from pypdf import PdfReader  # lazily: only PDF articles need it
    from pypdf.errors import PdfReadError

    if not data.strip():
        raise DocumentError(f"{name} is empty")
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise DocumentError(f"{name} is an encrypted PDF; save an unprotected copy and add that")
        return [page.extract_text() or "" for page in reader.pages]
    except PdfReadError as exc:
        raise DocumentError(f"{name} is not a readable PDF ({exc})") from None


def _pdf_child(send: object, data: bytes, name: str) -> None:
    """In a child process: _pdf_pages, its result or its error sent back."""
    try:
        result: tuple[str, object] = ("pages", _pdf_pages(data, name))
    except DocumentError as exc:
        result = ("error", str(exc))
    except Exception as exc:  # noqa: BLE001 - whatever pypdf raises on a malformed file
        result = ("error", f"{name} is not a readable PDF ({type(exc).__name__}: {exc})")
    send.send(result)  # type: ignore[attr-defined]
    send.close()  # type: ignore[attr-defined]


def _pdf_pages_within(data: bytes, name: str, seconds: float) -> list[str]:
    """_pdf_pages in a child process that is killed after `seconds`.

    pypdf is pure Python and cannot be interrupted from inside: a PDF built to be slow to read would
    hold a build (and the interpreter lock) for as long as it likes. A child process costs about half
    a second to start, paid only by PDF articles.
    """
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # no fork of a threaded server
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_pdf_child, args=(send, data, name), name="qa-pdf")
    child.start()
    send.close()
    try:
        if not receive.poll(max(0.0, seconds)):
            raise DocumentError(f"{name} took over {seconds:.3g} s to read and was stopped; it looks built to be "
                                "slow to parse: save it as plain text and add it again")
        kind, value = receive.recv()
    except EOFError:
        raise DocumentError(f"{name} could not be read: the PDF reader stopped "
                            f"(exit code {child.exitcode})") from None
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        receive.close()
    if kind == "error":
        raise DocumentError(str(value))
    return list(value)  # type: ignore[call-overload]


def _pdf_to_text(data: bytes, name: str, seconds: float | None = None) -> str:
    """The text of a PDF's pages, wrapped lines joined into paragraphs (one per line, as clean_lines expects).

    `seconds`: read the PDF in a child process stopped after that long (see _pdf_pages_within)."""
    pages = _pdf_pages(data, name) if seconds is None else _pdf_pages_within(data, name, seconds)
    paragraphs: list[str] = []
    # The paragraph's pieces, joined once at its end: adding each line to one growing string copied
    # the paragraph at every line, in time quadratic in its length.
    current: list[str] = []
    for line in "\n".join(pages).splitlines():
        line = line.strip()
        if not line:
            if current:
                paragraphs.append("".join(current))
            current = []
            continue
        if current and current[-1].endswith("-") and line[:1].islower():  # a word hyphenated at the line's end
            current[-1] = current[-1][:-1]
        elif current:
            current.append(" ")
        current.append(line)
        if _PDF_LINE_END.search(line) or len(line) < 40:
            paragraphs.append("".join(current))
            current = []
    if current:
        paragraphs.append("".join(current))
    if not paragraphs:
        raise DocumentError(f"{name} has no text layer (a scanned PDF?); only PDFs with text can be added")
    return "\n".join(paragraphs)


def decode(data: bytes, name: str) -> str:
    """Bytes of an article as text, or a DocumentError saying what is wrong with them."""
    if not data.strip():
        raise DocumentError(f"{name} is empty")
    if b"\x00" in data:
        raise DocumentError(f"{name} looks binary, not text; articles must be UTF-8 text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DocumentError(f"{name} is not UTF-8 (bad byte at position {exc.start}); save it as UTF-8") from None


def _deadline(name: str, seconds: float) -> Callable[[], None]:
    """A check that raises a DocumentError once `seconds` have passed since it was made."""
    ends = time.monotonic() + seconds

    def check() -> None:
        if time.monotonic() > ends:
            raise DocumentError(f"{name} took over {seconds:g} s to read and was stopped; it looks built to be "
                                "slow to parse: save it as plain text and add it again")

    return check


def parse(data: bytes, doc_id: str, suffix: str, sidecar: bytes | None = None, *,
          budget: float = PARSE_SECONDS) -> Document:
    """Turn an article's bytes (and optional sidecar JSON) into a cleaned Document.

    Raises DocumentError for bytes that are not an article, and for one that takes over `budget`
    seconds to read (checked between steps and every few hundred lines).
    """
    name = doc_id + suffix
    check = _deadline(name, budget)
    raw = _pdf_to_text(data, name, budget) if suffix == ".pdf" else decode(data, name)
    stated, raw = _front_matter(raw)
    overrides = checked_metadata(stated, name)
    if suffix in (".html", ".htm"):
        raw = _html_to_text(raw)
    elif suffix == ".md":
        raw = _markdown_to_text(raw)
    check()
    if sidecar is not None:
        try:
            loaded = json.loads(sidecar.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DocumentError(f"{doc_id}{META_SUFFIX} is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise DocumentError(f"{doc_id}{META_SUFFIX} must hold a JSON object")
        # A sidecar value overrides the front matter's, if it is a good one.
        overrides.update(checked_metadata({_META_KEYS[k]: v for k, v in loaded.items() if k in _META_KEYS and v is not None},
                                          doc_id + META_SUFFIX))
    paragraphs = clean_lines(raw, check)
    if not paragraphs:
        raise DocumentError(f"{name} has no article text left after cleaning")
    meta = extract_metadata(paragraphs, raw)
    check()
    meta.update(overrides)
    digest = hashlib.sha256(data + b"\x00" + (sidecar or b"")).hexdigest()
    return Document(
        doc_id=doc_id,
        title=meta["title"] or doc_id,
        source=meta["source"],
        published=meta["published"],
        url=meta["url"],
        text="\n\n".join(paragraphs),
        content_hash=digest,
    )


def article_files(docs_dir: Path) -> list[Path]:
    """Article files in a folder, sorted by id; sidecars and hidden files are not articles."""
    if not docs_dir.is_dir():
        raise DocumentError(f"articles folder {docs_dir} does not exist; create it or pass --docs DIR")
    # scandir's entries know their type without a stat each, and names sort faster than Paths: about
    # 0.1 s less for 7,250 articles, paid twice by every add.
    with os.scandir(docs_dir) as entries:
        names = sorted(entry.name for entry in entries
                       if entry.is_file() and not entry.name.startswith(".")
                       and os.path.splitext(entry.name)[1].lower() in SUFFIXES)
    ids: dict[str, str] = {}
    folded: dict[str, str] = {}  # ids by their case-folded form
    for name in names:
        stem = os.path.splitext(name)[0]
        if stem in ids:
            raise DocumentError(f"two articles share the id {stem!r}: {ids[stem]} and {name}; rename one")
        # On a case-insensitive file system (macOS, Windows) the two would be one file.
        if stem.casefold() in folded:
            raise DocumentError(f"two article ids differ only in case: {ids[folded[stem.casefold()]]} and {name}; "
                                "rename one")
        ids[stem] = name
        folded[stem.casefold()] = stem
    return [docs_dir / ids[key] for key in sorted(ids)]


def load(path: Path) -> Document:
    """Read one article file, with its sidecar if there is one."""
    sidecar_path = path.with_name(path.stem + META_SUFFIX)
    sidecar = sidecar_path.read_bytes() if sidecar_path.is_file() else None
    return parse(path.read_bytes(), path.stem, path.suffix.lower(), sidecar)


def file_hash(path: Path) -> str:
    """The content hash `load` would give, without cleaning the article."""
    sidecar_path = path.with_name(path.stem + META_SUFFIX)
    sidecar = sidecar_path.read_bytes() if sidecar_path.is_file() else b""
    return hashlib.sha256(path.read_bytes() + b"\x00" + sidecar).hexdigest()


def load_all(paths: Iterable[Path]) -> list[Document]:
    return [load(path) for path in paths]
