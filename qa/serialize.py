"""Core dataclasses -> the JSON shapes the API and `qa ask --json` share."""

from __future__ import annotations

from typing import Any

from .assistant import Passage, Result
from .documents import Document


def passage_json(p: Passage) -> dict[str, Any]:
    return {
        "rank": p.rank, "text": p.text, "score": p.score, "doc_id": p.doc_id, "title": p.title,
        "source": p.source, "published": p.published, "url": p.url, "position": p.position,
        "start": p.start, "end": p.end,
        "scores": {"dense": p.dense, "lexical": p.lexical, "fused": p.fused, "sentence": p.sentence,
                   "article": p.article, "coverage": p.coverage},
    }


def result_json(result: Result) -> dict[str, Any]:
    found = result.answer
    return {
        "question": result.question,
        "answer": None if found is None else {
            # Counted from 1, like `rank`: the rank of the passage holding the sentence.
            "text": found.text, "passage": found.passage + 1, "start": found.start, "end": found.end,
            "score": found.score,
            # The reader's exact answer words inside the sentence (article offsets); null with the reader off.
            "span": None if found.span is None else {
                "start": found.span[0], "end": found.span[1],
                "text": found.words,
            },
        },
        "passages": [passage_json(p) for p in result.passages],
        "took_ms": round(result.took_ms, 3),
        "mode": result.mode,
        "index_version": result.version,
        "resolved_question": result.resolved or result.question,
        "followup": result.followup,
        "filters": None if result.filters is None else result.filters.json(),
    }


def document_json(doc: Document, passages: int, with_text: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "doc_id": doc.doc_id, "title": doc.title, "source": doc.source, "published": doc.published,
        "url": doc.url, "passages": passages,
    }
    if with_text:
        data["text"] = doc.text
    return data
