"""An index version's articles, passages and sentences as columns, with an object per row only when asked for.

A million passages held as Chunk objects, three million sentence tuples and every article's text as a
Python string take gigabytes; as integer arrays and one buffer of article records (both memory-mapped
from the version's files when the version is large, see store.open_tables) they take the pages the
questions read. Each table gives what the list it stands for gave: a Document, a Chunk or a
(doc_id, start, end) tuple, made when indexed (tests/test_tables.py checks they are equal).

Passage rows hold, per passage: its article's row, its position in the article, its start and end
offsets, and its [first, last) sentence rows. Sentence rows hold: the article's row, start, end.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Sequence, overload

import numpy as np

from .chunking import Chunk
from .documents import Document

PASSAGE_COLUMNS = 6  # article row, position, start, end, first sentence row, last sentence row (exclusive)
SENTENCE_COLUMNS = 3  # article row, start, end
# Articles decoded from their records and kept: a question reads the articles of a few dozen sentences.
DECODED_ARTICLES = 1024


def record(doc: Document, passages: int) -> dict[str, Any]:
    """An article as its stored record says it."""
    return {
        "doc_id": doc.doc_id, "title": doc.title, "source": doc.source, "published": doc.published,
        "url": doc.url, "content_hash": doc.content_hash, "passages": passages, "text": doc.text,
    }


def encode_records(records: Iterable[dict[str, Any]]) -> tuple[bytes, np.ndarray]:
    """Records as JSON Lines bytes, and the byte offset where each starts (one more: where the last ends)."""
    lines = [json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records]
    offsets = np.zeros(len(lines) + 1, dtype=np.int64)
    np.cumsum([len(line) for line in lines], out=offsets[1:])
    return b"".join(lines), offsets


class Heading(NamedTuple):
    """What filters read of an article (see filters.Filters.admits), without its text."""

    doc_id: str
    source: str | None
    published: str | None


def content_hash(documents: Mapping[str, Document], doc_id: str) -> str | None:
    """An article's content hash, None if absent: from a table's column, decoding no record."""
    if isinstance(documents, DocumentTable):
        return documents.content_hash(doc_id)
    doc = documents.get(doc_id)
    return None if doc is None else doc.content_hash


def headings(documents: Mapping[str, Document]) -> Iterable[Heading] | Iterable[Document]:
    """What filters read of every article: from a table's columns, decoding no record."""
    if isinstance(documents, DocumentTable):
        return map(Heading, documents.ids, documents.sources, documents.published)
    return documents.values()


class DocumentTable(Mapping[str, Document]):
    """Articles by id, in id order, decoded from their JSON records when read.

    The ids, sources, publication dates and content hashes are held as lists (filters read them for every
    article, a build compares every hash with the folder's files); titles and texts stay in the records.
    """

    def __init__(self, ids: Sequence[str], sources: Sequence[str | None], published: Sequence[str | None],
                 records: Any, offsets: np.ndarray, hashes: Sequence[str]) -> None:
        if not len(ids) == len(sources) == len(published) == len(hashes) == len(offsets) - 1:
            raise ValueError("the article columns and records do not match")
        self.ids = list(ids)
        self.sources = list(sources)
        self.published = list(published)
        self.hashes = list(hashes)
        self._records = records  # bytes, or a memory map of the records file
        self._offsets = offsets
        self._row = {doc_id: row for row, doc_id in enumerate(self.ids)}
        self._decoded = lru_cache(maxsize=DECODED_ARTICLES)(self._decode)

    @classmethod
    def of(cls, documents: Iterable[Document], passages: Mapping[str, int] | None = None) -> DocumentTable:
        """A table held in memory, of these articles (in id order) with their passage counts."""
        return cls.from_records([record(d, (passages or {}).get(d.doc_id, 0)) for d in documents])

    @classmethod
    def from_records(cls, records: Sequence[dict[str, Any]]) -> DocumentTable:
        """A table held in memory, of these stored records (in id order)."""
        blob, offsets = encode_records(records)
        return cls([r["doc_id"] for r in records], [r["source"] for r in records], [r["published"] for r in records],
                   blob, offsets, [r["content_hash"] for r in records])

    def stored(self, first: int = 0, last: int | None = None) -> tuple[bytes, np.ndarray]:
        """The records of rows [first, last) as stored (JSON Lines), and where each starts in those bytes."""
        last = len(self) if last is None else last
        offsets = np.asarray(self._offsets[first:last + 1], dtype=np.int64)
        return bytes(self._records[int(offsets[0]):int(offsets[-1])]), offsets - offsets[0]

    def record(self, row: int) -> dict[str, Any]:
        """The stored record of the article in this row."""
        start, end = int(self._offsets[row]), int(self._offsets[row + 1])
        found = json.loads(bytes(self._records[start:end]))
        if not isinstance(found, dict) or found.get("doc_id") != self.ids[row]:
            raise ValueError(f"the record of article row {row} is not the article {self.ids[row]!r}")
        return found

    def _decode(self, row: int) -> Document:
        r = self.record(row)
        return Document(r["doc_id"], r["title"], r["source"], r["published"], r["url"], r["text"], r["content_hash"])

    def content_hash(self, doc_id: str) -> str | None:
        """The article's content hash, None if the version does not hold it; decodes no record."""
        row = self._row.get(doc_id)
        return None if row is None else self.hashes[row]

    def at(self, row: int) -> Document:
        return self._decoded(int(row))

    def __getitem__(self, doc_id: str) -> Document:
        return self._decoded(self._row[doc_id])

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._row

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)


class SentenceTable(Sequence[tuple[str, int, int]]):
    """Every sentence as (doc_id, start, end), from rows of (article row, start, end)."""

    def __init__(self, ids: Sequence[str], rows: np.ndarray) -> None:
        self.ids = ids  # article ids by row
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def owners(self) -> list[str]:
        """Each sentence's article id."""
        return [self.ids[row] for row in self.rows[:, 0].tolist()]

    @overload
    def __getitem__(self, key: int) -> tuple[str, int, int]: ...

    @overload
    def __getitem__(self, key: slice) -> SentenceTable: ...

    def __getitem__(self, key):  # type: ignore[no-untyped-def]
        if isinstance(key, slice):
            return SentenceTable(self.ids, self.rows[key])
        doc, start, end = self.rows[key].tolist()
        return self.ids[doc], start, end

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and len(self) == len(other) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]


class PassageTable(Sequence[Chunk]):
    """Every passage as a Chunk, from rows of PASSAGE_COLUMNS integers, its text cut from its article's."""

    def __init__(self, documents: DocumentTable, rows: np.ndarray, sentences: SentenceTable) -> None:
        self.documents = documents
        self.rows = rows
        self.sentences = sentences

    @property
    def doc_rows(self) -> np.ndarray:
        """Each passage's article row."""
        return self.rows[:, 0]

    @property
    def sentence_ranges(self) -> np.ndarray:
        """Each passage's [first, last) sentence rows."""
        return self.rows[:, 4:6]

    def __len__(self) -> int:
        return len(self.rows)

    def owners(self) -> list[str]:
        """Each passage's article id."""
        ids = self.documents.ids
        return [ids[row] for row in self.doc_rows.tolist()]

    @overload
    def __getitem__(self, key: int) -> Chunk: ...

    @overload
    def __getitem__(self, key: slice) -> PassageTable: ...

    def __getitem__(self, key):  # type: ignore[no-untyped-def]
        if isinstance(key, slice):
            return PassageTable(self.documents, self.rows[key], self.sentences)
        doc, position, start, end, first, last = self.rows[key].tolist()
        article = self.documents.at(doc)
        spans = tuple((s, e) for s, e in self.sentences.rows[first:last, 1:3].tolist())
        return Chunk(article.doc_id, position, start, end, article.text[start:end], spans)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and len(self) == len(other) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]


def article_rows(documents: Mapping[str, Document], chunks: Sequence[Chunk]) -> np.ndarray:
    """Each passage's article row (its place in `documents`, in id order): a table's own column when it is one."""
    if isinstance(chunks, PassageTable) and chunks.documents is documents:
        return np.asarray(chunks.doc_rows, dtype=np.int64)
    number = {doc_id: row for row, doc_id in enumerate(documents)}
    return np.array([number[c.doc_id] for c in chunks], dtype=np.int64)


def owners(rows: Sequence[Chunk] | Sequence[tuple[str, int, int]]) -> list[str]:
    """The article id of each passage or sentence, read from a table's columns when it is one."""
    if isinstance(rows, (PassageTable, SentenceTable)):
        return rows.owners()
    return [row.doc_id if isinstance(row, Chunk) else row[0] for row in rows]


def passage_rows(chunks: Sequence[Chunk], chunk_sentences: Sequence[Sequence[int]],
                 row_of: Mapping[str, int]) -> np.ndarray:
    """PassageTable rows for these passages (row_of: article id -> row)."""
    rows = np.zeros((len(chunks), PASSAGE_COLUMNS), dtype=np.int64)
    if len(chunks):
        rows[:, :4] = [(row_of[c.doc_id], c.position, c.start, c.end) for c in chunks]
        rows[:, 4:] = np.asarray(chunk_sentences, dtype=np.int64).reshape(-1, 2)
    return rows


def sentence_rows(sentences: Sequence[tuple[str, int, int]], row_of: Mapping[str, int]) -> np.ndarray:
    """SentenceTable rows for these (doc_id, start, end) sentences (row_of: article id -> row)."""
    rows = np.zeros((len(sentences), SENTENCE_COLUMNS), dtype=np.int64)
    if len(sentences):
        rows[:] = [(row_of[d], s, e) for d, s, e in sentences]
    return rows


def rows_of(documents: Mapping[str, Document], chunks: Sequence[Chunk], sentences: Sequence[tuple[str, int, int]],
            chunk_sentences: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """A version's passage and sentence rows: its tables' own when they are tables over these articles."""
    if isinstance(chunks, PassageTable) and chunks.documents is documents and isinstance(sentences, SentenceTable) \
            and sentences.ids is chunks.documents.ids:
        return np.asarray(chunks.rows, dtype=np.int64), np.asarray(sentences.rows, dtype=np.int64)
    row_of = {doc_id: row for row, doc_id in enumerate(documents)}
    return passage_rows(chunks, chunk_sentences, row_of), sentence_rows(sentences, row_of)

def keys(chunks: Sequence[Chunk]) -> tuple[list[str], list[int]]:
    """Each passage's article id and position, read from a table's columns when it is one."""
    if isinstance(chunks, PassageTable):
        return chunks.owners(), chunks.rows[:, 1].tolist()
    return [c.doc_id for c in chunks], [c.position for c in chunks]


class DocumentRun(Sequence[Document]):
    """Articles [first, last) of a DocumentTable, decoded only when read: a run of a version a build carries
    into the next one, whose records are copied as they are stored (see concat)."""

    def __init__(self, table: DocumentTable, first: int, last: int) -> None:
        self.table, self.first, self.last = table, first, last

    @property
    def ids(self) -> list[str]:
        return self.table.ids[self.first:self.last]

    def __len__(self) -> int:
        return self.last - self.first

    @overload
    def __getitem__(self, key: int) -> Document: ...

    @overload
    def __getitem__(self, key: slice) -> list[Document]: ...

    def __getitem__(self, key):  # type: ignore[no-untyped-def]
        if isinstance(key, slice):
            return [self[i] for i in range(*key.indices(len(self)))]
        row = key + len(self) if key < 0 else key
        if not 0 <= row < len(self):
            raise IndexError(key)
        return self.table.at(self.first + row)


def ids_of(docs: Sequence[Document]) -> list[str]:
    """The ids of these articles, decoding none of a DocumentRun's."""
    return docs.ids if isinstance(docs, DocumentRun) else [d.doc_id for d in docs]


# A build's share of articles: the articles, their passages, their sentences, and each passage's [first, last)
# sentence rows counted from the share's first sentence.
Share = tuple[Sequence[Document], Sequence[Chunk], Sequence[tuple[str, int, int]], Sequence[Sequence[int]]]


def concat(shares: Sequence[Share]) -> tuple[DocumentTable, PassageTable, SentenceTable]:
    """One version's tables from consecutive shares (in id order), held in memory.

    A share carried from a loaded version (a DocumentRun with slices of that version's tables) is copied as
    rows and record bytes, decoding nothing; a share of new articles (lists) is encoded first.
    """
    ids: list[str] = []
    sources: list[str | None] = []
    published: list[str | None] = []
    hashes: list[str] = []
    blobs: list[bytes] = []
    lengths: list[np.ndarray] = []
    passage_blocks: list[np.ndarray] = []
    sentence_blocks: list[np.ndarray] = []
    sentence_count = 0
    for docs, chunks, sentences, ranges in shares:
        if not isinstance(docs, DocumentRun):  # new articles: encoded into a table of their own first
            listed = list(docs)
            counts = dict.fromkeys((d.doc_id for d in listed), 0)
            for owner in owners(chunks):
                counts[owner] += 1
            docs = DocumentRun(DocumentTable.of(listed, counts), 0, len(listed))
        table, first, last = docs.table, docs.first, docs.last
        at = len(ids)
        ids += table.ids[first:last]
        sources += table.sources[first:last]
        published += table.published[first:last]
        hashes += table.hashes[first:last]
        blob, offsets = table.stored(first, last)
        blobs.append(blob)
        lengths.append(np.diff(offsets))
        row_of = {doc_id: at + i for i, doc_id in enumerate(ids[at:])}
        if isinstance(chunks, PassageTable) and chunks.documents is table:
            rows = np.array(chunks.rows, dtype=np.int64)
            rows[:, 0] += at - first
        else:
            rows = passage_rows(chunks, ranges, row_of)
        rows[:, 4:6] = np.asarray(ranges, dtype=np.int64).reshape(-1, 2) + sentence_count
        passage_blocks.append(rows)
        if isinstance(sentences, SentenceTable) and sentences.ids is table.ids:
            spans = np.array(sentences.rows, dtype=np.int64)
            spans[:, 0] += at - first
        else:
            spans = sentence_rows(sentences, row_of)
        sentence_blocks.append(spans)
        sentence_count += len(spans)
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    if lengths:
        np.cumsum(np.concatenate(lengths), out=offsets[1:])
    documents = DocumentTable(ids, sources, published, b"".join(blobs), offsets, hashes)
    sentence_table = SentenceTable(documents.ids, _stacked(sentence_blocks, SENTENCE_COLUMNS))
    return documents, PassageTable(documents, _stacked(passage_blocks, PASSAGE_COLUMNS), sentence_table), sentence_table


def _stacked(blocks: list[np.ndarray], width: int) -> np.ndarray:
    return np.concatenate(blocks) if blocks else np.zeros((0, width), dtype=np.int64)
