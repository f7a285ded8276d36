"""Index terms: the tokeniser shared by BM25 and answer sentences, every text's terms as int arrays, and
the two bm25s indexes built from them.

Tokenising every passage, article and sentence (regex, stop words, Snowball stemming) is the slow
part of opening an index, so it happens when an article is indexed. Each index version stores a
sorted vocabulary and, CSR style, the term ids of every passage, article and sentence: one flat
int32 array and int64 row offsets. An unchanged article's ids are carried into the next version
by remapping them to the new vocabulary, never by tokenising it again, and because the vocabulary
is sorted the result is the same whichever way a version was built. bm25s indexes the passages and
the articles from those ids (it accepts pre-tokenised input), with the same scores as from the words.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence, overload

import numpy as np

from .chunking import Chunk
from .documents import Document

_WORD = re.compile(r"\w+")
# Bump whenever Lexicon.terms, passage_text or article_text change what terms a text yields: stored
# term ids are then derived again from the stored texts (see indexing.build), without re-embedding.
LEXICON_VERSION = 1
# BM25 parameters (tuned on training questions; k1=1.2, b=0.75 is the textbook default).
K1 = 0.9
B = 0.4


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


def passage_text(chunk: Chunk) -> str:
    """The text BM25 indexes for a passage."""
    # Prefixing each passage with its article's headline was measured on the training sets:
    # no gain on SQuAD or SciFact and a loss on the seed articles, whose headlines share words.
    return chunk.text


def article_text(doc: Document) -> str:
    """The text BM25 indexes for a whole article: its headline and all of its words."""
    return doc.text if doc.text.startswith(doc.title) else f"{doc.title}\n{doc.text}"


# --- rows of term ids ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rows:
    """Term ids of many texts: row i holds ids[offsets[i]:offsets[i + 1]], ascending."""

    offsets: np.ndarray  # int64, one more than there are rows, starting at 0
    ids: np.ndarray  # int32

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def slice(self, first: int, last: int) -> Rows:
        """Rows [first, last) as their own Rows (the ids are a view, not a copy)."""
        start, stop = int(self.offsets[first]), int(self.offsets[last])
        window = getattr(self.ids, "window", None)  # ids read from the file when used (see store.RowFile)
        return Rows(self.offsets[first:last + 1] - start, window(start, stop) if window else self.ids[start:stop])


def rows_of(lists: Iterable[Sequence[int]]) -> Rows:
    """Rows from one list of term ids per text (each already ascending)."""
    lists = list(lists)
    lengths = np.fromiter((len(ids) for ids in lists), dtype=np.int64, count=len(lists))
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.fromiter((i for row in lists for i in row), dtype=np.int32, count=int(offsets[-1]))
    return Rows(offsets, ids)


def concat_rows(parts: Sequence[Rows]) -> Rows:
    """One Rows holding the rows of every part, in order."""
    if not parts:
        return Rows(np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int32))
    sizes = np.array([len(p.ids) for p in parts], dtype=np.int64)
    bases = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    offsets = np.concatenate([[0]] + [p.offsets[1:] + base for p, base in zip(parts, bases)]).astype(np.int64)
    ids = np.concatenate([p.ids for p in parts]).astype(np.int32, copy=False)
    return Rows(offsets, ids)


@dataclass(frozen=True)
class IndexTerms:
    """A vocabulary and the term ids of passages, articles and sentences (one index version or one article).

    Passages and articles keep every occurrence (BM25 needs counts and lengths); sentences keep
    each term once (coverage only asks whether a sentence holds a term).
    """

    vocabulary: Sequence[str]  # sorted, without duplicates
    passages: Rows
    articles: Rows
    sentences: Rows

    def share(self, articles: tuple[int, int], passages: tuple[int, int], sentences: tuple[int, int]) -> IndexTerms:
        """Some consecutive articles' share: their [first, last) article, passage and sentence rows."""
        return IndexTerms(self.vocabulary, self.passages.slice(*passages), self.articles.slice(*articles),
                          self.sentences.slice(*sentences))


def tokenise(lexicon: Lexicon, articles: Iterable[Document], passages: Iterable[Chunk],
             sentences: Iterable[str]) -> IndexTerms:
    """The terms of these articles, passages and sentence texts, over a sorted vocabulary of their own."""
    passage_terms = [lexicon.terms(passage_text(c)) for c in passages]
    article_terms = [lexicon.terms(article_text(doc)) for doc in articles]
    sentence_terms = [set(lexicon.terms(text)) for text in sentences]
    vocabulary = sorted(set().union(*passage_terms, *article_terms, *sentence_terms))
    number = {term: i for i, term in enumerate(vocabulary)}

    def rows(texts: list[Any]) -> Rows:
        return rows_of(sorted(number[t] for t in terms) for terms in texts)

    return IndexTerms(vocabulary, rows(passage_terms), rows(article_terms), rows(sentence_terms))


def tokenise_article(lexicon: Lexicon, doc: Document, chunks: Sequence[Chunk],
                     spans: Sequence[tuple[int, int]]) -> IndexTerms:
    """One article's terms: its passages, the article itself and its sentences at these spans."""
    return tokenise(lexicon, [doc], chunks, [doc.text[start:end] for start, end in spans])


def merge(parts: Sequence[IndexTerms]) -> IndexTerms:
    """The parts' rows, in order, over one sorted vocabulary of the terms they use."""
    vocabularies: dict[int, Sequence[str]] = {}
    used: dict[int, np.ndarray] = {}
    for part in parts:
        key = id(part.vocabulary)
        vocabularies[key] = part.vocabulary
        mask = used.setdefault(key, np.zeros(len(part.vocabulary), dtype=bool))
        for rows in (part.passages, part.articles, part.sentences):
            mask[rows.ids] = True
    terms: set[str] = set()
    for key, mask in used.items():
        words = vocabularies[key]
        terms.update(words[i] for i in np.flatnonzero(mask).tolist())
    vocabulary = sorted(terms)
    number = {term: i for i, term in enumerate(vocabulary)}
    # Old id -> new id; both vocabularies are sorted, so ids stay ascending within every row.
    remaps = {key: np.array([number.get(word, -1) for word in vocabularies[key]], dtype=np.int32)
              for key in vocabularies}

    def join(kind: str) -> Rows:
        chosen = [getattr(part, kind) for part in parts]
        remapped = [Rows(rows.offsets, remaps[id(part.vocabulary)][rows.ids]) for part, rows in zip(parts, chosen)]
        return concat_rows(remapped)

    return IndexTerms(vocabulary, join("passages"), join("articles"), join("sentences"))


def pack(terms: IndexTerms) -> tuple[np.ndarray, np.ndarray]:
    """Passage, article and sentence rows as one flat ids array and one offsets array, for storage."""
    joined = concat_rows([terms.passages, terms.articles, terms.sentences])
    return joined.ids, joined.offsets


def unpack(vocabulary: list[str], ids: np.ndarray, offsets: np.ndarray, passages: int, articles: int,
           sentences: int, check_ids: bool = True) -> IndexTerms:
    """The inverse of pack; ValueError if the arrays do not fit the counts or (unless not `check_ids`) the
    vocabulary."""
    if ids.dtype != np.int32 or offsets.dtype != np.int64 or ids.ndim != 1 or offsets.ndim != 1:
        raise ValueError("term arrays have the wrong type")
    if len(offsets) != passages + articles + sentences + 1 or offsets[0] != 0 or offsets[-1] != len(ids):
        raise ValueError("term offsets do not match the passages, articles and sentences")
    if check_ids and len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= len(vocabulary)):
        raise ValueError("a term id is outside the vocabulary")
    if np.any(np.diff(offsets) < 0):
        raise ValueError("term offsets go backwards")
    whole = Rows(offsets, ids)
    a, b = passages, passages + articles
    return IndexTerms(vocabulary, whole.slice(0, a), whole.slice(a, b), whole.slice(b, b + sentences))


# --- what the retriever reads ----------------------------------------------------------------------


class SentenceTerms(Sequence[frozenset]):  # type: ignore[type-arg]
    """Each sentence's set of terms, made from the stored ids when first asked for (a question reads a few)."""

    def __init__(self, rows: Rows, vocabulary: Sequence[str]) -> None:
        self._rows = rows
        self._vocabulary = vocabulary
        # Filled as questions read sentences; a race only makes the same set twice.
        self._made: list[frozenset[str] | None] = [None] * len(rows)

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, row: int) -> frozenset[str]: ...

    @overload
    def __getitem__(self, row: slice) -> list[frozenset[str]]: ...

    def __getitem__(self, row):  # type: ignore[no-untyped-def]
        if isinstance(row, slice):
            return [self[i] for i in range(*row.indices(len(self)))]
        if row < 0:
            row += len(self)
        if not 0 <= row < len(self):
            raise IndexError(row)
        made = self._made[row]
        if made is None:
            start, stop = self._rows.offsets[row], self._rows.offsets[row + 1]
            words = self._vocabulary
            made = self._made[row] = frozenset(words[i] for i in self._rows.ids[start:stop].tolist())
        return made


def document_frequencies(rows: Rows, n_terms: int, index: Any = None) -> np.ndarray:
    """How many rows hold each term id at least once.

    `index`, the rows' bm25s index if there is one, holds the answer already: a term's entries in its score
    matrix are the rows that hold it. Read from there, the term ids (read from the file as needed in a large
    version, see store.RowFile) stay unread.
    """
    if index is not None and len(index.scores["indptr"]) == n_terms + 1 and index.scores["num_docs"] == len(rows):
        return np.diff(np.asarray(index.scores["indptr"], dtype=np.int64))
    ids = rows.ids
    row_of = np.repeat(np.arange(len(rows), dtype=np.int64), rows.lengths())
    # Ids ascend within a row, so a term's repeats in one row are adjacent.
    first = np.ones(len(ids), dtype=bool)
    first[1:] = (ids[1:] != ids[:-1]) | (row_of[1:] != row_of[:-1])
    return np.bincount(ids[first], minlength=n_terms)


# --- the bm25s indexes -----------------------------------------------------------------------------


def import_bm25s() -> Any:
    """bm25s, imported when first needed (it brings in scipy), with its logging quietened."""
    import bm25s

    # bm25s sets its logger to DEBUG when imported and logs every index build; keep it out of the server log.
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


def bm25_matrix(rows: Rows, vocabulary_size: int, k1: float = K1, b: float = B) -> dict[str, Any]:
    """bm25s's score matrix (its default Lucene BM25: CSC, documents by terms) computed from the rows' arrays.

    bm25s builds it from a Python list of ints per document, a Counter per document and dicts over the
    vocabulary: about 36 bytes per token and minutes of interpreter time on a large upload (20 articles
    of 1 MB, 600,000 distinct terms). Here every step is one numpy operation over all tokens, and the
    numbers are bm25s's own (same idf and term-frequency formulas, same dtypes, same entry order).
    """
    lengths = rows.lengths()
    documents = len(lengths)
    ids = rows.ids
    owner = np.repeat(np.arange(documents, dtype=np.int32), lengths)
    # Each row's ids ascend, so a (document, term) pair's occurrences are adjacent: count the runs.
    starts = np.ones(len(ids), dtype=bool)
    starts[1:] = (ids[1:] != ids[:-1]) | (owner[1:] != owner[:-1])
    first = np.flatnonzero(starts)
    tf = np.diff(np.append(first, len(ids))).astype(np.float32)
    doc, term = owner[first], ids[first]
    del owner, starts, first
    frequency = np.bincount(term, minlength=vocabulary_size)
    idf = np.log(1 + (documents - frequency + 0.5) / (frequency + 0.5)).astype(np.float32)
    norm = k1 * ((1 - b) + b * lengths / lengths.mean())  # float64, per document, as bm25s computes it
    scores = (idf[term] * (tf / (norm[doc] + tf))).astype(np.float32)
    order = np.argsort(term, kind="stable")  # by term, documents ascending within a term: scipy's CSC order
    indptr = np.zeros(vocabulary_size + 1, dtype=np.int64)
    np.cumsum(frequency, out=indptr[1:])
    return {"data": scores[order], "indices": doc[order].astype(np.int32), "indptr": indptr, "num_docs": documents}


def bm25(rows: Rows, numbers: dict[str, int], k1: float = K1, b: float = B) -> Any:
    """A bm25s index of these rows of term ids (numbers: term -> id), or None when they hold no term."""
    if not rows.ids.size:
        return None  # bm25s cannot average the length of no text
    bm25s = import_bm25s()
    from bm25s.tokenization import Tokenized

    class ArrayBM25(bm25s.BM25):  # type: ignore[misc, name-defined]
        """bm25s's index, its score matrix built from our arrays (the override bm25s documents for this)."""

        def build_index_from_ids(self, unique_token_ids: Any, corpus_token_ids: Rows, **_: Any) -> dict[str, Any]:
            if (self.method, self.idf_method) != ("lucene", "lucene"):
                raise ValueError(f"bm25_matrix computes Lucene BM25, not {self.method}/{self.idf_method}")
            self.nonoccurrence_array = None  # as bm25s sets it for Lucene (only BM25L and BM25+ use one)
            return bm25_matrix(corpus_token_ids, len(unique_token_ids), self.k1, self.b)

    index = ArrayBM25(k1=k1, b=b)
    # No "" token: questions are tokenised by Lexicon.terms, which never yields it.
    index.index(Tokenized(ids=rows, vocab=numbers), create_empty_token=False, show_progress=False)
    index.__class__ = bm25s.BM25  # a plain bm25s index from here on (saved and loaded as one)
    return index


@dataclass(frozen=True)
class Bm25Indexes:
    """The bm25s indexes of the passages and of the whole articles (headline and all), one vocabulary."""

    passages: Any  # bm25s.BM25
    articles: Any  # bm25s.BM25

    def fits(self, k1: float, b: float, passages: int, articles: int) -> bool:
        """Whether these indexes were built with these parameters over this many passages and articles."""
        return all(index.k1 == k1 and index.b == b and index.scores["num_docs"] == n
                   for index, n in ((self.passages, passages), (self.articles, articles)))


def bm25_indexes(terms: IndexTerms, k1: float = K1, b: float = B) -> Bm25Indexes | None:
    """bm25s indexes of the passages and articles; None when there is no term to index."""
    numbers = {term: i for i, term in enumerate(terms.vocabulary)}
    passages, articles = bm25(terms.passages, numbers, k1, b), bm25(terms.articles, numbers, k1, b)
    return None if passages is None or articles is None else Bm25Indexes(passages, articles)
