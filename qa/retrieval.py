"""Question -> ranked passages: dense (FAISS), lexical (BM25 via bm25s), and their fusion."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .chunking import Chunk
from .store import IndexData

Mode = Literal["hybrid", "dense", "lexical"]
MODES: tuple[Mode, ...] = ("hybrid", "dense", "lexical")
_WORD = re.compile(r"\w+")
# How deep each ranker looks before fusion; fusion only reorders what either one found.
_DEPTH = 100
# bm25s logs every index build at DEBUG; questions should not fill the server log.
logging.getLogger("bm25s").setLevel(logging.WARNING)


@dataclass(frozen=True)
class Hit:
    """One ranked passage, with the scores that put it there."""

    row: int  # passage row in the index
    chunk: Chunk
    score: float  # the score the list is ordered by
    dense: float | None  # cosine similarity to the question
    lexical: float | None  # BM25 score
    fused: float | None  # fusion score (hybrid mode only)


class Lexicon:
    """Tokenisation shared by BM25 and answer-sentence overlap: lower-case, stop words out, stemmed."""

    def __init__(self) -> None:
        import Stemmer
        from bm25s.stopwords import STOPWORDS_EN

        self._stem = Stemmer.Stemmer("english").stemWords
        self._stop = frozenset(STOPWORDS_EN) | {"what", "which", "who", "whom", "when", "where", "why", "how",
                                                 "does", "did", "do", "has", "have", "had", "its", "from"}

    def terms(self, text: str) -> list[str]:
        words = [w for w in _WORD.findall(text.lower()) if w not in self._stop]
        return self._stem(words)


class Retriever:
    """Ranks the passages of one loaded index version; holds no state between questions."""

    def __init__(self, data: IndexData, lexicon: Lexicon | None = None, k1: float = 1.2, b: float = 0.75) -> None:
        import bm25s

        self.data = data
        self.lexicon = lexicon or Lexicon()
        tokens = [self.lexicon.terms(self._lexical_text(c)) for c in data.chunks]
        self._bm25 = bm25s.BM25(k1=k1, b=b)
        if tokens:
            self._bm25.index(tokens, show_progress=False)
        # Document frequencies, for weighting question words by how rare they are.
        df: dict[str, int] = {}
        for terms in tokens:
            for term in set(terms):
                df[term] = df.get(term, 0) + 1
        n = max(len(tokens), 1)
        self.idf = {term: float(np.log(1 + (n - f + 0.5) / (f + 0.5))) for term, f in df.items()}
        self.default_idf = float(np.log(1 + (n + 0.5) / 0.5))

    def _lexical_text(self, chunk: Chunk) -> str:
        return chunk.text

    def dense_scores(self, query: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and cosine scores of the nearest passages."""
        depth = min(depth, len(self.data.chunks))
        if depth == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        scores, rows = self.data.faiss_index.search(query.reshape(1, -1).astype(np.float32), depth)
        keep = rows[0] >= 0
        return rows[0][keep], scores[0][keep]

    def lexical_scores(self, terms: list[str]) -> np.ndarray:
        """BM25 score of every passage (zeros when no term is in the vocabulary)."""
        n = len(self.data.chunks)
        ids = self._bm25.get_tokens_ids(terms) if n else []
        if not ids:
            return np.zeros(n, dtype=np.float32)
        return np.asarray(self._bm25.get_scores_from_ids(ids), dtype=np.float32)

    def search(self, query: np.ndarray | None, question: str, *, mode: Mode = "hybrid", depth: int = _DEPTH,
               rrf_k: int = 60, dense_weight: float = 0.5) -> list[Hit]:
        """All candidate passages, best first; `query` is the question's vector (unused for lexical)."""
        dense: dict[int, float] = {}
        dense_rank: dict[int, int] = {}
        if mode != "lexical" and query is not None:
            rows, scores = self.dense_scores(query, depth)
            dense = {int(r): float(s) for r, s in zip(rows, scores)}
            dense_rank = {int(r): rank for rank, r in enumerate(rows)}
        lexical: dict[int, float] = {}
        lexical_rank: dict[int, int] = {}
        if mode != "dense":
            all_scores = self.lexical_scores(self.lexicon.terms(question))
            order = np.argsort(-all_scores, kind="stable")[:depth]
            order = [int(r) for r in order if all_scores[r] > 0]
            lexical = {r: float(all_scores[r]) for r in order}
            lexical_rank = {r: rank for rank, r in enumerate(order)}
            if mode == "hybrid":
                # Every dense candidate gets its lexical score too, so the explanation is complete.
                lexical.update({r: float(all_scores[r]) for r in dense})
        hits = []
        for row in set(dense) | set(lexical_rank):
            fused = None
            if mode == "hybrid":
                fused = 0.0
                if row in dense_rank:
                    fused += dense_weight / (rrf_k + dense_rank[row] + 1)
                if row in lexical_rank:
                    fused += (1 - dense_weight) / (rrf_k + lexical_rank[row] + 1)
                score = fused
            elif mode == "dense":
                score = dense[row]
            else:
                score = lexical[row]
            hits.append(Hit(row, self.data.chunks[row], score, dense.get(row), lexical.get(row), fused))
        # Ties break by passage order, so rankings are reproducible.
        hits.sort(key=lambda h: (-h.score, h.row))
        return hits


def _overlap(a: Chunk, b: Chunk) -> float:
    """Share of the shorter passage that the two passages have in common."""
    if a.doc_id != b.doc_id:
        return 0.0
    common = min(a.end, b.end) - max(a.start, b.start)
    return max(common, 0) / max(min(a.end - a.start, b.end - b.start), 1)


def tidy(hits: list[Hit], top_k: int, max_per_doc: int) -> list[Hit]:
    """Drop near-duplicates (overlapping passages, repeated text) and cap passages per article."""
    kept: list[Hit] = []
    per_doc: dict[str, int] = {}
    seen_text: set[str] = set()
    for hit in hits:
        key = " ".join(_WORD.findall(hit.chunk.text.lower()))
        if key in seen_text or per_doc.get(hit.chunk.doc_id, 0) >= max_per_doc:
            continue
        if any(_overlap(hit.chunk, other.chunk) > 0.5 for other in kept):
            continue
        kept.append(hit)
        seen_text.add(key)
        per_doc[hit.chunk.doc_id] = per_doc.get(hit.chunk.doc_id, 0) + 1
        if len(kept) == top_k:
            break
    return kept
