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

import logging
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .chunking import Chunk
from .store import IndexData

Mode = Literal["hybrid", "dense", "lexical"]
MODES: tuple[Mode, ...] = ("hybrid", "dense", "lexical")
Fusion = Literal["zscore", "rrf"]
FUSIONS: tuple[Fusion, ...] = ("zscore", "rrf")
_WORD = re.compile(r"\w+")
# How deep each ranker looks before fusion; fusion only reorders what either one found.
_DEPTH = 100
# BM25 parameters (tuned on training questions; k1=1.2, b=0.75 is the textbook default).
K1 = 0.9
B = 0.4
# Shares within the two halves of the hybrid weight (see module docstring).
SENTENCE_SHARE = 2 / 3  # of the dense half: best sentence's cosine (the rest: the passage's)
ARTICLE_SHARE = 1 / 3  # of the lexical half: the article's BM25 (the rest: the passage's)
# On top of both halves: the best sentence's IDF-weighted share of the question's terms.
COVERAGE_WEIGHT = 0.2
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
    sentence: float | None = None  # best cosine of one of the passage's sentences (hybrid only)
    article: float | None = None  # BM25 score of the whole article (hybrid only)
    coverage: float | None = None  # best sentence's IDF-weighted share of the question's terms (hybrid only)


class Terms(list):  # type: ignore[type-arg]
    """A text's index terms that remember the text: the answer step reads the question's form from it."""

    __slots__ = ("text",)

    def __init__(self, terms: list[str], text: str = "") -> None:
        super().__init__(terms)
        self.text = text


class Lexicon:
    """Tokenisation shared by BM25 and answer-sentence overlap: lower-case, stop words out, stemmed."""

    def __init__(self) -> None:
        import Stemmer
        from bm25s.stopwords import STOPWORDS_EN

        self._stem = Stemmer.Stemmer("english").stemWords
        self._stop = frozenset(STOPWORDS_EN) | {"what", "which", "who", "whom", "when", "where", "why", "how",
                                                 "does", "did", "do", "has", "have", "had", "its", "from"}

    def terms(self, text: str) -> Terms:
        words = [w for w in _WORD.findall(text.lower()) if w not in self._stop]
        return Terms(self._stem(words), text)


def _bm25(tokens: list[list[str]], k1: float, b: float):  # type: ignore[no-untyped-def]
    import bm25s

    index = bm25s.BM25(k1=k1, b=b)
    if tokens:
        index.index(tokens, show_progress=False)
    return index


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
        tokens = [self.lexicon.terms(self._lexical_text(c)) for c in data.chunks]
        self._bm25 = _bm25(tokens, k1, b)
        # The article index: one BM25 document per article, and each passage's article number.
        self._doc_ids = list(data.documents)
        number = {doc_id: i for i, doc_id in enumerate(self._doc_ids)}
        self._article_of = np.array([number[c.doc_id] for c in data.chunks], dtype=np.int64)
        self._articles = _bm25([self.lexicon.terms(self._article_text(d)) for d in self._doc_ids], k1, b)
        # Document frequencies, for weighting question words by how rare they are.
        df: dict[str, int] = {}
        for terms in tokens:
            for term in set(terms):
                df[term] = df.get(term, 0) + 1
        n = max(len(tokens), 1)
        self.idf = {term: float(np.log(1 + (n - f + 0.5) / (f + 0.5))) for term, f in df.items()}
        self.default_idf = float(np.log(1 + (n + 0.5) / 0.5))
        self._sentence_rows = np.array(data.chunk_sentences, dtype=np.int64).reshape(-1, 2)
        # Each sentence's terms, for sentence coverage here and in the answer step.
        self.sentence_terms = [frozenset(self.lexicon.terms(data.documents[doc_id].text[start:end]))
                                for doc_id, start, end in data.sentences]

    def _lexical_text(self, chunk: Chunk) -> str:
        # Prefixing each passage with its article's headline was measured on the training sets:
        # no gain on SQuAD or SciFact and a loss on the seed articles, whose headlines share words.
        return chunk.text

    def _article_text(self, doc_id: str) -> str:
        doc = self.data.documents[doc_id]
        return doc.text if doc.text.startswith(doc.title) else f"{doc.title}\n{doc.text}"

    def dense_scores(self, query: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and cosine scores of the nearest passages."""
        depth = min(depth, len(self.data.chunks))
        if depth == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        scores, rows = self.data.faiss_index.search(query.reshape(1, -1).astype(np.float32), depth)
        keep = rows[0] >= 0
        return rows[0][keep], scores[0][keep]

    @staticmethod
    def _scores(index, ids: list[int], n: int) -> np.ndarray:  # type: ignore[no-untyped-def]
        if not ids or n == 0:
            return np.zeros(n, dtype=np.float32)
        return np.asarray(index.get_scores_from_ids(ids), dtype=np.float32)

    def lexical_scores(self, terms: list[str]) -> np.ndarray:
        """BM25 score of every passage (zeros when no term is in the vocabulary)."""
        n = len(self.data.chunks)
        ids = self._bm25.get_tokens_ids(terms) if n else []
        return self._scores(self._bm25, ids, n)

    def article_scores(self, terms: list[str]) -> np.ndarray:
        """BM25 score of every article, spread to its passages."""
        n = len(self._doc_ids)
        ids = self._articles.get_tokens_ids(terms) if n else []
        return self._scores(self._articles, ids, n)[self._article_of]

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
        sentence_terms = self.sentence_terms
        for i, (first, last) in enumerate(self._sentence_rows[rows].tolist()):
            out[i] = max((sum(w for t, w in weights.items() if t in sentence_terms[s]) for s in range(first, last)),
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
