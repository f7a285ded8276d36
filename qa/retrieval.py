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
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Literal

import numpy as np

from . import lexical, tables
from .chunking import Chunk
from .lexical import B, K1, Lexicon
from .store import IndexData

Mode = Literal["hybrid", "dense", "lexical"]
MODES: tuple[Mode, ...] = ("hybrid", "dense", "lexical")
Fusion = Literal["zscore", "rrf"]
FUSIONS: tuple[Fusion, ...] = ("zscore", "rrf")
_WORD = re.compile(r"\w+")
# Each ASCII byte that _WORD matches as itself, every other byte as a space (see _text_key).
_ASCII_WORDS = bytes(c if c < 128 and _WORD.fullmatch(chr(c)) else 32 for c in range(256))
# How deep each ranker looks before fusion; fusion only reorders what either one found. 50 against 100 on
# the training questions: SQuAD R@1 0.862 vs 0.860, SciFact nDCG@10 0.7388 vs 0.7386, seeds the same, and
# ranking plus tidy 1.04 against 1.37 ms a SQuAD question (see bench/RESULTS.md).
DEPTH = 50
# Hits made ready first (see Retriever._hits): with top_k=5, tidy read at most 7 on 300 SQuAD dev questions.
_FIRST_HITS = 10
# Shares within the two halves of the hybrid weight (see module docstring).
SENTENCE_SHARE = 2 / 3  # of the dense half: best sentence's cosine (the rest: the passage's)
ARTICLE_SHARE = 1 / 3  # of the lexical half: the article's BM25 (the rest: the passage's)
# On top of both halves: the best sentence's IDF-weighted share of the question's terms.
COVERAGE_WEIGHT = 0.2
# A follow-up's context (the conversation's earlier question) counts this much of the question's own words
# in BM25 (Settings.context_weight sets it for the assistant; see qa/conversation.py).
CONTEXT_WEIGHT = 0.3


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
    """Z-scores along the last axis: each row of a 2-D array on its own (zeros where a row does not vary)."""
    centred = values - values.mean(axis=-1, keepdims=True)
    spread = np.sqrt(np.square(centred).mean(axis=-1, keepdims=True))  # values.std(), without a second mean
    return np.divide(centred, spread, out=np.zeros_like(values), where=spread > 1e-9)


def best_rows(scores: np.ndarray, depth: int) -> np.ndarray:
    """Rows of the `depth` best positive scores, best first, ties in row order (what a stable sort of all gives)."""
    rows = np.flatnonzero(scores > 0)
    if depth <= 0:
        return rows[:0]
    found = scores[rows]
    if len(rows) > depth:
        # Only scores at or above the depth-th best can be among the best: sort those, not every passage.
        cutoff = np.partition(found, len(rows) - depth)[len(rows) - depth]
        keep = found >= cutoff
        rows, found = rows[keep], found[keep]
    return rows[np.argsort(-found, kind="stable")][:depth]


def _bm25(index: Any, terms: list[str], n: int) -> np.ndarray:
    """The same scores as bm25s' get_scores_from_ids, added up term by term in the same order.

    bm25s adds each term's column with np.add.at; a column holds each document at most once, so plain
    fancy-index addition gives the same sums and is several times faster.
    """
    ids = index.get_tokens_ids(terms) if index is not None else []
    scores = np.zeros(n, dtype=np.dtype(index.dtype) if index is not None else np.float32)
    if not ids:
        return scores
    data, indices, indptr = index.scores["data"], index.scores["indices"], index.scores["indptr"]
    for term in ids:
        start, end = indptr[term], indptr[term + 1]
        scores[indices[start:end]] += data[start:end]
    if index.nonoccurrence_array is not None:  # BM25L and BM25+ only; this project uses Lucene's BM25
        scores += index.nonoccurrence_array[np.asarray(ids)].sum()
    return scores.astype(np.float32, copy=False)


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
        self._article_of = tables.article_rows(data.documents, data.chunks)
        # Inverse document frequencies over the passages, for weighting question words by how rare they are.
        n = max(len(data.chunks), 1)
        frequencies = lexical.document_frequencies(terms.passages, len(terms.vocabulary), self._bm25)
        present = np.flatnonzero(frequencies)
        idf_of = {f: float(np.log(1 + (n - f + 0.5) / (f + 0.5))) for f in set(frequencies[present].tolist())}
        vocabulary = terms.vocabulary
        self.idf = {vocabulary[i]: idf_of[f] for i, f in zip(present.tolist(), frequencies[present].tolist())}
        self.default_idf = float(np.log(1 + (n + 0.5) / 0.5))
        self._sentence_rows = np.array(data.chunk_sentences, dtype=np.int64).reshape(-1, 2)
        # Each sentence's terms, for the answer step, and as ids, for sentence coverage over many passages.
        self.sentence_terms = lexical.SentenceTerms(terms.sentences, vocabulary)
        self._sentence_ids = terms.sentences
        self._vocabulary = vocabulary

    def allowed_rows(self, doc_ids: set[str]) -> np.ndarray:
        """A mask over passage rows: True for the passages of these articles."""
        articles = np.array([doc_id in doc_ids for doc_id in self._doc_ids], dtype=bool)
        return articles[self._article_of] if len(articles) else np.zeros(len(self.data.chunks), dtype=bool)

    def dense_scores(self, query: np.ndarray, depth: int,
                     allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows and cosine scores of the nearest passages (of the `allowed` rows only, if given)."""
        depth = min(depth, len(self.data.chunks))
        if depth == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        if allowed is not None:
            # Exact search over the admitted passages: a filter picks before ranking, never after it.
            rows = np.flatnonzero(allowed)
            scores = (self.data.vectors[rows] @ query).astype(np.float32)
            order = np.lexsort((rows, -scores))[:depth]
            return rows[order], scores[order]
        scores, rows = self.data.faiss_index.search(query.reshape(1, -1).astype(np.float32), depth)
        keep = rows[0] >= 0
        return rows[0][keep], scores[0][keep]

    def lexical_scores(self, terms: list[str]) -> np.ndarray:
        """BM25 score of every passage (zeros when no term is in the vocabulary)."""
        return _bm25(self._bm25, terms, len(self.data.chunks))

    def article_scores(self, terms: list[str], rows: np.ndarray | None = None) -> np.ndarray:
        """BM25 score of the article of every passage, or of these passage rows."""
        of = self._article_of if rows is None else self._article_of[rows]
        return _bm25(self._articles, terms, len(self._doc_ids))[of]

    def sentence_scores(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """For each passage row, the best cosine between the question and one of its sentences."""
        return self._best_cosines(query, rows, *self._sentences_of(rows))

    def _sentences_of(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The sentence rows of these passage rows, one passage after another, and how many each passage has."""
        spans = self._sentence_rows[rows]
        lengths = spans[:, 1] - spans[:, 0]
        return _ranges(spans[:, 0], lengths), lengths

    def _best_cosines(self, query: np.ndarray, rows: np.ndarray, sentences: np.ndarray,
                      lengths: np.ndarray) -> np.ndarray:
        """sentence_scores, given _sentences_of(rows)."""
        if len(rows) == 0:
            return np.zeros(0, dtype=np.float32)
        if np.any(lengths <= 0):  # a passage without sentences: only its own cosine
            return (self.data.vectors[rows] @ query).astype(np.float32)
        cosines = self.data.sentence_vectors[sentences] @ query
        return np.maximum.reduceat(cosines, np.cumsum(lengths) - lengths).astype(np.float32)

    def _best_coverage(self, terms: list[str], sentences: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """For each passage (given as _sentences_of(its rows)), the largest IDF-weighted share of the question's
        terms one of its sentences holds."""
        # In the question's order, each term once: the sums come out the same under any hash seed.
        weights = {t: self.idf.get(t, self.default_idf) for t in dict.fromkeys(terms)}
        total = sum(weights.values())
        out = np.zeros(len(lengths), dtype=np.float32)
        if not total or not lengths.any():
            return out
        # The term ids each of the sentences holds, one sentence after another.
        offsets = self._sentence_ids.offsets
        counts = offsets[sentences + 1] - offsets[sentences]
        ids = self._sentence_ids.ids[_ranges(offsets[sentences], counts)]
        sentence_of = np.repeat(np.arange(len(sentences)), counts)
        # Added term by term in the order of `weights`, as a sum over each sentence's terms would: the same floats.
        # Fancy-index addition adds a term's weight to a sentence once, however often the sentence lists it.
        shares = np.zeros(len(sentences))
        for term, weight in weights.items():
            term_id = self._term_id(term)
            if term_id >= 0:  # a term no text has is in no sentence
                shares[sentence_of[ids == term_id]] += weight
        has = lengths > 0
        out[has] = np.maximum.reduceat(shares, (np.cumsum(lengths) - lengths)[has]) / total
        return out

    def _term_id(self, term: str) -> int:
        """The term's id in the (sorted) vocabulary, or -1 if no text has it."""
        i = bisect_left(self._vocabulary, term)
        return i if i < len(self._vocabulary) and self._vocabulary[i] == term else -1

    def search(self, query: np.ndarray | None, question: str, **options: Any) -> list[Hit]:
        """All candidate passages, best first; `query` is the question's vector (unused for lexical).

        Takes the options of `ranked`.
        """
        return list(self.ranked(query, question, **options))

    def ranked(self, query: np.ndarray | None, question: str, *, mode: Mode = "hybrid", depth: int = DEPTH,
               rrf_k: int = 60, dense_weight: float = 0.5, fusion: Fusion = "zscore",
               sentence_share: float = SENTENCE_SHARE, article_share: float = ARTICLE_SHARE,
               coverage_weight: float = COVERAGE_WEIGHT, terms: list[str] | None = None,
               allowed: np.ndarray | None = None, context_terms: list[str] | None = None,
               context_weight: float = CONTEXT_WEIGHT) -> Iterator[Hit]:
        """The candidates of `search`, best first, each Hit made only when reached (tidy stops after a few).

        `terms` are the question's terms if the caller has them already (Lexicon.terms of `question`).
        `allowed` (a mask over passage rows, see allowed_rows) limits the candidates before ranking.
        `context_terms`, a follow-up's context, add `context_weight` times their BM25 scores.
        """
        if not self.data.chunks:
            return iter(())
        if allowed is not None and not allowed.any():
            return iter(())
        if mode == "hybrid" and query is None:
            mode = "lexical"
        dense_rows = np.zeros(0, dtype=np.int64)
        dense_found = np.zeros(0, dtype=np.float32)
        if mode != "lexical" and query is not None:
            dense_rows, dense_found = self.dense_scores(query, depth, allowed)
        if mode == "dense":
            return self._hits(dense_rows, dense_found, dense_found, None, None, None, None, None)
        terms = self.lexicon.terms(question) if terms is None else terms
        lexical_all = self.lexical_scores(terms)
        extra = [t for t in dict.fromkeys(context_terms or ()) if t not in set(terms)]
        if extra and context_weight:
            lexical_all = lexical_all + np.float32(context_weight) * self.lexical_scores(extra)
        if allowed is not None:
            lexical_all = np.where(allowed, lexical_all, np.float32(0))
        lexical_rows = best_rows(lexical_all, depth)
        if mode == "lexical":
            found = lexical_all[lexical_rows]
            return self._hits(lexical_rows, found, None, found, None, None, None, None)
        assert query is not None
        rows = _union(dense_rows, lexical_rows)  # sorted: ties break by passage order
        # Every candidate gets every score, so the ranking and its explanation are complete.
        dense = (self.data.vectors[rows] @ query).astype(np.float32)
        sentences = self._sentences_of(rows)  # both sentence signals read the same sentences
        sentence = self._best_cosines(query, rows, *sentences)
        lexical = lexical_all[rows]
        article = self.article_scores(terms, rows)
        if extra and context_weight:
            article = article + np.float32(context_weight) * self.article_scores(extra, rows)
        coverage = self._best_coverage(terms, *sentences)
        weights = (dense_weight * (1 - sentence_share), dense_weight * sentence_share,
                   (1 - dense_weight) * (1 - article_share), (1 - dense_weight) * article_share, coverage_weight)
        signals = np.array([dense, sentence, lexical, article, coverage], dtype=np.float64)
        zscores = _zscores(signals) if fusion == "zscore" else None  # all five signals in one pass
        fused = np.zeros(len(rows))
        for i, (weight, values, is_lexical) in enumerate(zip(weights, signals, (False, False, True, True, True))):
            if weight == 0:
                continue
            if zscores is not None:
                part = zscores[i]
            else:
                part = _rrf(values, rrf_k)
                if is_lexical:  # a passage sharing no word with the question earns no lexical credit
                    part = np.where(values > 0, part, 0.0)
            fused += weight * part
        return self._hits(rows, fused, dense, lexical, fused, sentence, article, coverage)

    def _hits(self, rows: np.ndarray, score: np.ndarray, dense: np.ndarray | None, lexical: np.ndarray | None,
              fused: np.ndarray | None, sentence: np.ndarray | None, article: np.ndarray | None,
              coverage: np.ndarray | None) -> Iterator[Hit]:
        # Ties break by passage order, so rankings are reproducible.
        order = np.lexsort((rows, -score))
        chunks = self.data.chunks
        # Tidy usually stops within the first few hits: Python values for those first, for the rest if it goes on.
        for block in (order[:_FIRST_HITS], order[_FIRST_HITS:]):
            none = [None] * len(block)
            columns = [none if values is None else values[block].tolist()
                       for values in (dense, lexical, fused, sentence, article, coverage)]
            for row, value, d, lx, f, st, ar, cv in zip(rows[block].tolist(), score[block].tolist(), *columns):
                yield Hit(row, chunks[row], value, d, lx, f, st, ar, cv)


def _union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The values in either array, ascending, each once: np.union1d's answer, several times faster on a few hundred."""
    values = np.concatenate([a, b])
    values.sort()
    first = np.ones(len(values), dtype=bool)
    first[1:] = values[1:] != values[:-1]
    return values[first]


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """starts[0], starts[0] + 1, ... (lengths[0] of them), then the same for starts[1], and so on."""
    total = int(lengths.sum())
    firsts = np.cumsum(lengths) - lengths  # where each range begins in the result
    return np.arange(total) + np.repeat(starts - firsts, lengths)


def _overlap(a: Chunk, b: Chunk) -> float:
    """Share of the shorter passage that the two passages have in common."""
    if a.doc_id != b.doc_id:
        return 0.0
    common = min(a.end, b.end) - max(a.start, b.start)
    return max(common, 0) / max(min(a.end - a.start, b.end - b.start), 1)


def _text_key(text: str) -> str:
    """The text's words, lower-case, one space apart: the same for texts that differ only in case and punctuation."""
    lower = text.lower()
    if lower.isascii():
        # What the regex below gives, worked out byte by byte: about three times faster on a passage.
        return b" ".join(lower.encode("ascii").translate(_ASCII_WORDS).split()).decode("ascii")
    return " ".join(_WORD.findall(lower))


def tidy(hits: Iterable[Hit], top_k: int, max_per_doc: int) -> list[Hit]:
    """Drop near-duplicates (overlapping passages, repeated text) and cap passages per article."""
    kept: list[Hit] = []
    per_doc: dict[str, int] = {}
    seen_text: set[str] = set()
    for hit in hits:
        # The cheap checks first: the text key takes a pass over the passage.
        if per_doc.get(hit.chunk.doc_id, 0) >= max_per_doc:
            continue
        if any(_overlap(hit.chunk, other.chunk) > 0.5 for other in kept):
            continue
        key = _text_key(hit.chunk.text)
        if key in seen_text:
            continue
        kept.append(hit)
        seen_text.add(key)
        per_doc[hit.chunk.doc_id] = per_doc.get(hit.chunk.doc_id, 0) + 1
        if len(kept) == top_k:
            break
    return kept
