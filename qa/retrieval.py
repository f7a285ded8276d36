"""Question -> ranked passages: dense (FAISS), lexical (BM25 via bm25s), and their fusion.

Hybrid ranking looks at the union of the best dense and the best BM25 passages and scores each
on five signals: the passage's cosine to the question, its best sentence's cosine (questions are
usually answered by one sentence), the passage's BM25 score, its article's BM25 score (all of the
article's words, headline included), and the largest IDF-weighted share of the question's words
that one of its sentences holds. Each signal is turned into z-scores over the candidates and the
weighted sum orders them; `dense_weight` splits the weight between the dense pair and the lexical
pair, and the sentence coverage adds `coverage_weight` on top. The weights were tuned on training
questions only (see bench/RESULTS.md). Reciprocal rank fusion of the same signals is kept as `fusion="rrf"`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from . import lexical
from .chunking import Chunk
from .lexical import B, K1, Lexicon, Terms  # noqa: F401  (Terms: re-exported for callers of this module)
from .store import IndexData

Mode = Literal["hybrid", "dense", "lexical"]
MODES: tuple[Mode, ...] = ("hybrid", "dense", "lexical")
Fusion = Literal["zscore", "rrf"]
FUSIONS: tuple[Fusion, ...] = ("zscore", "rrf")
_WORD = re.compile(r"\w+")
# How deep each ranker looks before fusion; fusion only reorders what either one found.
_DEPTH = 100
# Shares within the two halves of the hybrid weight (see module docstring).
SENTENCE_SHARE = 2 / 3  # of the dense half: best sentence's cosine (the rest: the passage's)
ARTICLE_SHARE = 1 / 3  # of the lexical half: the article's BM25 (the rest: the passage's)
# On top of both halves: the best sentence's IDF-weighted share of the question's terms.
COVERAGE_WEIGHT = 0.2


@dataclass(frozen=True)
class Hit:
    """One ranked passage, with the scores that put it there."""

    row: int  # passage row in the index
    chunk: Chunk
    score: float  # the score the list is ordered by
    dense: float | None  # cosine similarity to the question
    lexical: float | None  # BM25 score
    fused: float | None  # fusion score (hybrid mode only)
    sentence: float | None = None  # best cosine of one of the passage's sentences (hybrid only)
    article: float | None = None  # BM25 score of the whole article (hybrid only)
    coverage: float | None = None  # best sentence's IDF-weighted share of the question's terms (hybrid only)


def _zscores(values: np.ndarray) -> np.ndarray:
    spread = float(values.std())
    return (values - values.mean()) / spread if spread > 1e-9 else np.zeros_like(values)


def _rrf(values: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(-values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    return 1.0 / (k + ranks + 1)


class Retriever:
    """Ranks the passages of one loaded index version; holds no state between questions."""

    def __init__(self, data: IndexData, lexicon: Lexicon | None = None, k1: float = K1, b: float = B) -> None:
        self.data = data
        self.lexicon = lexicon or Lexicon()
        terms = data.terms
        if terms is None:  # an index stored without terms: derive them from its texts, as builds once did
            sentences = (data.documents[doc_id].text[start:end] for doc_id, start, end in data.sentences)
            terms = lexical.tokenise(self.lexicon, data.documents.values(), data.chunks, sentences)
        bm25 = data.bm25
        if bm25 is None or not bm25.fits(k1, b, len(data.chunks), len(data.documents)):
            bm25 = lexical.bm25_indexes(terms, k1, b)
        # The passage index and the article index (one BM25 document per article), or None if nothing has a term.
        self._bm25, self._articles = (bm25.passages, bm25.articles) if bm25 is not None else (None, None)
        self._doc_ids = list(data.documents)
        number = {doc_id: i for i, doc_id in enumerate(self._doc_ids)}
        self._article_of = np.array([number[c.doc_id] for c in data.chunks], dtype=np.int64)
        # Inverse document frequencies over the passages, for weighting question words by how rare they are.
        n = max(len(data.chunks), 1)
        frequencies = lexical.document_frequencies(terms.passages, len(terms.vocabulary))
        present = np.flatnonzero(frequencies)
        idf_of = {f: float(np.log(1 + (n - f + 0.5) / (f + 0.5))) for f in set(frequencies[present].tolist())}
        vocabulary = terms.vocabulary
        self.idf = {vocabulary[i]: idf_of[f] for i, f in zip(present.tolist(), frequencies[present].tolist())}
        self.default_idf = float(np.log(1 + (n + 0.5) / 0.5))
        self._sentence_rows = np.array(data.chunk_sentences, dtype=np.int64).reshape(-1, 2)
        # Each sentence's terms, for sentence coverage here and in the answer step.
        self.sentence_terms = lexical.SentenceTerms(terms.sentences, vocabulary)

    def dense_scores(self, query: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and cosine scores of the nearest passages."""
        depth = min(depth, len(self.data.chunks))
        if depth == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        scores, rows = self.data.faiss_index.search(query.reshape(1, -1).astype(np.float32), depth)
        keep = rows[0] >= 0
        return rows[0][keep], scores[0][keep]

    @staticmethod
    def _scores(index, terms: list[str], n: int) -> np.ndarray:  # type: ignore[no-untyped-def]
        ids = index.get_tokens_ids(terms) if index is not None else []
        if not ids:
            return np.zeros(n, dtype=np.float32)
        return np.asarray(index.get_scores_from_ids(ids), dtype=np.float32)

    def lexical_scores(self, terms: list[str]) -> np.ndarray:
        """BM25 score of every passage (zeros when no term is in the vocabulary)."""
        return self._scores(self._bm25, terms, len(self.data.chunks))

    def article_scores(self, terms: list[str]) -> np.ndarray:
        """BM25 score of every article, spread to its passages."""
        return self._scores(self._articles, terms, len(self._doc_ids))[self._article_of]

    def sentence_scores(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """For each passage row, the best cosine between the question and one of its sentences."""
        if len(rows) == 0:
            return np.zeros(0, dtype=np.float32)
        spans = self._sentence_rows[rows]
        if np.any(spans[:, 1] <= spans[:, 0]):  # a passage without sentences: only its own cosine
            return (self.data.vectors[rows] @ query).astype(np.float32)
        lengths = spans[:, 1] - spans[:, 0]
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        sentence_rows = np.arange(int(lengths.sum())) + np.repeat(spans[:, 0] - starts, lengths)
        cosines = self.data.sentence_vectors[sentence_rows] @ query
        return np.maximum.reduceat(cosines, starts).astype(np.float32)

    def sentence_coverage(self, terms: list[str], rows: np.ndarray) -> np.ndarray:
        """For each passage row, the largest IDF-weighted share of the question's terms one sentence holds."""
        weights = {t: self.idf.get(t, self.default_idf) for t in set(terms)}
        total = sum(weights.values())
        out = np.zeros(len(rows), dtype=np.float32)
        if not total:
            return out
        for i, (first, last) in enumerate(self._sentence_rows[rows].tolist()):
            sentences = self.sentence_terms[first:last]  # each set fetched once, not once per question term
            out[i] = max((sum(w for t, w in weights.items() if t in present) for present in sentences),
                         default=0.0) / total
        return out

    def search(self, query: np.ndarray | None, question: str, *, mode: Mode = "hybrid", depth: int = _DEPTH,
               rrf_k: int = 60, dense_weight: float = 0.5, fusion: Fusion = "zscore",
               sentence_share: float = SENTENCE_SHARE, article_share: float = ARTICLE_SHARE,
               coverage_weight: float = COVERAGE_WEIGHT) -> list[Hit]:
        """All candidate passages, best first; `query` is the question's vector (unused for lexical)."""
        chunks = self.data.chunks
        if not chunks:
            return []
        if mode == "hybrid" and query is None:
            mode = "lexical"
        dense_rows = np.zeros(0, dtype=np.int64)
        dense_found = np.zeros(0, dtype=np.float32)
        if mode != "lexical" and query is not None:
            dense_rows, dense_found = self.dense_scores(query, depth)
        terms = self.lexicon.terms(question) if mode != "dense" else []
        lexical_all = self.lexical_scores(terms) if mode != "dense" else None
        if mode == "dense":
            return self._hits(dense_rows, dense_found, dense_found, None, None, None, None, None)
        assert lexical_all is not None
        order = np.argsort(-lexical_all, kind="stable")[:depth]
        lexical_rows = order[lexical_all[order] > 0]
        if mode == "lexical":
            found = lexical_all[lexical_rows]
            return self._hits(lexical_rows, found, None, found, None, None, None, None)
        assert query is not None
        rows = np.unique(np.concatenate([dense_rows, lexical_rows]))  # sorted: ties break by passage order
        # Every candidate gets every score, so the ranking and its explanation are complete.
        dense = (self.data.vectors[rows] @ query).astype(np.float32)
        sentence = self.sentence_scores(query, rows)
        lexical = lexical_all[rows]
        article = self.article_scores(terms)[rows]
        coverage = self.sentence_coverage(terms, rows)
        weights = (dense_weight * (1 - sentence_share), dense_weight * sentence_share,
                   (1 - dense_weight) * (1 - article_share), (1 - dense_weight) * article_share, coverage_weight)
        fused = np.zeros(len(rows))
        for weight, signal, is_lexical in zip(weights, (dense, sentence, lexical, article, coverage),
                                              (False, False, True, True, True)):
            if weight == 0:
                continue
            values = signal.astype(np.float64)
            if fusion == "rrf":
                part = _rrf(values, rrf_k)
                if is_lexical:  # a passage sharing no word with the question earns no lexical credit
                    part = np.where(values > 0, part, 0.0)
            else:
                part = _zscores(values)
            fused += weight * part
        return self._hits(rows, fused, dense, lexical, fused, sentence, article, coverage)

    def _hits(self, rows: np.ndarray, score: np.ndarray, dense: np.ndarray | None, lexical: np.ndarray | None,
              fused: np.ndarray | None, sentence: np.ndarray | None, article: np.ndarray | None,
              coverage: np.ndarray | None) -> list[Hit]:
        # Ties break by passage order, so rankings are reproducible.
        order = np.lexsort((rows, -score))
        columns = [None if values is None else values[order].tolist()
                   for values in (dense, lexical, fused, sentence, article, coverage)]
        none = [None] * len(order)
        dense_l, lexical_l, fused_l, sentence_l, article_l, coverage_l = (none if c is None else c for c in columns)
        chunks = self.data.chunks
        return [Hit(row, chunks[row], value, d, lx, f, st, ar, cv) for row, value, d, lx, f, st, ar, cv
                in zip(rows[order].tolist(), score[order].tolist(), dense_l, lexical_l, fused_l, sentence_l,
                       article_l, coverage_l)]


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
