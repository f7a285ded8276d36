"""Which articles a question may be answered from: sources, a span of publication dates, article ids.

Filters choose the passages before they are ranked (see Retriever.ranked's `allowed`), so a filtered
question still gets `top_k` passages when that many match.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any, Iterable, Mapping

from .documents import Document
from .errors import QuestionError
from .tables import Heading

KEYS = ("sources", "published_from", "published_to", "doc_ids")
MAX_VALUES = 100


@dataclass(frozen=True)
class Filters:
    """Every given condition must hold; an empty tuple or None sets no condition."""

    sources: tuple[str, ...] = ()
    published_from: str | None = None  # YYYY-MM-DD, inclusive
    published_to: str | None = None  # YYYY-MM-DD, inclusive
    doc_ids: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.sources or self.published_from or self.published_to or self.doc_ids)

    def admits(self, doc: Document | Heading) -> bool:
        """Whether the article may answer; an article with no date is outside any date span."""
        if self.doc_ids and doc.doc_id not in self.doc_ids:
            return False
        if self.sources and (doc.source or "").casefold() not in {s.casefold() for s in self.sources}:
            return False
        if self.published_from or self.published_to:
            if not doc.published:
                return False
            if self.published_from and doc.published < self.published_from:
                return False
            if self.published_to and doc.published > self.published_to:
                return False
        return True

    def json(self) -> dict[str, Any]:
        return {"sources": list(self.sources), "published_from": self.published_from,
                "published_to": self.published_to, "doc_ids": list(self.doc_ids)}


def _date(key: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, date):
        return value.isoformat()
    try:
        return date.fromisoformat(str(value)).isoformat() if len(str(value)) == 10 else _bad_date(key, value)
    except ValueError:
        return _bad_date(key, value)


def _bad_date(key: str, value: Any) -> str:
    raise QuestionError(f"filters.{key} must be a date as YYYY-MM-DD, got {value!r}")


def _strings(key: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in value):
        raise QuestionError(f"filters.{key} must be a list of non-empty strings")
    if len(value) > MAX_VALUES:
        raise QuestionError(f"filters.{key} holds {len(value)} values; the limit is {MAX_VALUES}")
    return tuple(dict.fromkeys(v.strip() for v in value))


def parse(raw: Mapping[str, Any] | Filters | None) -> Filters:
    """Checked filters from a mapping (the API's JSON, the CLI's flags); a QuestionError says what is wrong."""
    if raw is None:
        return Filters()
    if isinstance(raw, Filters):
        raw = raw.json()
    if not isinstance(raw, Mapping):
        raise QuestionError("filters must be an object with sources, published_from, published_to or doc_ids")
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise QuestionError(f"unknown filter {', '.join(map(repr, unknown))}; filters are {', '.join(KEYS)}")
    found = Filters(_strings("sources", raw.get("sources")), _date("published_from", raw.get("published_from")),
                    _date("published_to", raw.get("published_to")), _strings("doc_ids", raw.get("doc_ids")))
    if found.published_from and found.published_to and found.published_from > found.published_to:
        raise QuestionError(f"filters.published_from ({found.published_from}) is after filters.published_to "
                            f"({found.published_to})")
    return found


def admitted(filters: Filters, documents: Iterable[Document] | Iterable[Heading]) -> set[str]:
    """Ids of the articles the filters admit; unknown ids in `doc_ids` are an error, not an empty answer."""
    docs = list(documents)
    if filters.doc_ids:
        known = {doc.doc_id for doc in docs}
        missing = [d for d in filters.doc_ids if d not in known]
        if missing:
            raise QuestionError(f"filters.doc_ids: no article with id {', '.join(map(repr, missing))}; "
                                "list the articles with GET /documents or `qa stats`")
    return {doc.doc_id for doc in docs if filters.admits(doc)}
