"""Ranked passages -> the sentence that answers, or an explicit "nothing answers this"."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .retrieval import Hit, Retriever
from .store import IndexData


@dataclass(frozen=True)
class Answer:
    """The answering sentence: hits[passage] holds it, at article offsets [start, end)."""

    text: str
    passage: int
    start: int
    end: int
    score: float


@dataclass(frozen=True)
class SentenceScore:
    passage: int
    row: int  # sentence row in the index
    dense: float
    coverage: float  # IDF-weighted share of the question's terms the sentence contains
    score: float


def score_sentences(query: np.ndarray, terms: list[str], hits: list[Hit], data: IndexData, retriever: Retriever,
                    passages: int = 3, dense_weight: float = 0.6) -> list[SentenceScore]:
    """Score each sentence of the top passages by meaning (dense) and by shared rare words."""
    weights = {t: retriever.idf.get(t, retriever.default_idf) for t in set(terms)}
    total = sum(weights.values())
    scored = []
    seen: set[int] = set()
    for number, hit in enumerate(hits[:passages]):
        first, last = data.chunk_sentences[hit.row]
        rows = [r for r in range(first, last) if r not in seen]
        seen.update(rows)
        if not rows:
            continue
        dense = data.sentence_vectors[rows] @ query
        for row, cosine in zip(rows, dense):
            doc_id, start, end = data.sentences[row]
            present = set(retriever.lexicon.terms(data.documents[doc_id].text[start:end]))
            coverage = sum(w for t, w in weights.items() if t in present) / total if total else 0.0
            score = dense_weight * float(cosine) + (1 - dense_weight) * coverage
            scored.append(SentenceScore(number, row, float(cosine), coverage, score))
    scored.sort(key=lambda s: (-s.score, s.passage, s.row))
    return scored


def choose(query: np.ndarray, terms: list[str], hits: list[Hit], data: IndexData, retriever: Retriever,
           threshold: float) -> Answer | None:
    """The best sentence if it clears the threshold; None means the articles do not answer."""
    scored = score_sentences(query, terms, hits, data, retriever)
    if not scored or scored[0].score < threshold:
        return None
    best = scored[0]
    doc_id, start, end = data.sentences[best.row]
    return Answer(data.documents[doc_id].text[start:end], best.passage, start, end, best.score)
