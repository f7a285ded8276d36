"""The only code that touches the index folder: versions, manifest, arrays, atomic swaps.

Layout: each build is written to a hidden temporary folder, renamed to `v-<time>-<id>/`, and
then `CURRENT` (a one-line file naming the live version) is replaced atomically. A crash at any
moment leaves either the old or the new version named in CURRENT, both complete.

A version holds its articles, passages and sentences as tables (qa/tables.py): the articles' ids,
sources and dates as JSON columns, their records as JSON Lines with an offsets array, and the passage
and sentence rows as integer arrays. A version written before the tables (documents.json and
passages.json) still loads, into the same tables in memory; the next build writes tables. A version
whose vectors are large is read from its files as questions need rows (RowFile), not into memory.

A version also holds its index terms (vocabulary and term ids, see lexical.py) and the two bm25s
indexes built from them, so opening it tokenises nothing. A version written before these existed,
or with another `lexicon_version`, still loads: its terms are then derived from the stored texts
(by the retriever when serving, by the next build for good), and nothing is embedded again.

Above APPROXIMATE_ABOVE passages the FAISS index is an HNSW graph. A version that only adds articles
to the one it was built from grows a copy of that graph instead of building one anew, so the graph's
labels are in the order passages arrived, not passage rows: `dense_rows.npy` maps each label to its
row. A version without that file (an exact index, or an HNSW one from before it) is labelled by row.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import mmap
import os
import shutil
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import numpy.lib.format as npy

from . import compression, tables
from .chunking import Chunk
from .documents import CLEANING_VERSION, Document
from .errors import BuildCancelled, IndexBusy, IndexCorrupt, IndexIncompatible, IndexMissing
from .lexical import LEXICON_VERSION, Bm25Indexes, IndexTerms, import_bm25s, pack, unpack

# Term files were added without a format change: older versions still load (see the module docstring).
FORMAT_VERSION = 1
CURRENT = "CURRENT"
LOCK = ".lock"
MANIFEST = "manifest.json"
# Articles (columns, records and where each record starts) and passage and sentence rows: see qa/tables.py.
TABLE_FILES = ("articles.json", "articles.jsonl", "articles.npy", "passages.npy", "sentences.npy")
CORE_FILES = TABLE_FILES + ("vectors.npy", "sentence_vectors.npy", "dense.faiss")
# What versions written before the tables held instead of TABLE_FILES: still read (see _read_json_tables).
JSON_FILES = ("documents.json", "passages.json")
JSON_CORE_FILES = JSON_FILES + CORE_FILES[len(TABLE_FILES):]
TERM_FILES = ("terms.json", "term_ids.npy", "term_offsets.npy")
# bm25s saves an index as five files; each one's name here, by the bm25s.BM25.save argument naming it.
_BM25_PARTS = {"data_name": "data.npy", "indices_name": "indices.npy", "indptr_name": "indptr.npy",
               "vocab_name": "vocab.json", "params_name": "params.json"}
_BM25_KINDS = ("passages", "articles")
BM25_FILES = tuple(f"bm25-{kind}.{part}" for kind in _BM25_KINDS for part in _BM25_PARTS.values())
FILES = CORE_FILES + TERM_FILES + BM25_FILES
# Every file's checksum, as the manifest records it ("checksum" names the kind; versions written before the
# field used SHA-256). Opening a version checks every file: at a million passages (5.2 GB) SHA-256 took 2.5 s
# of a 4 s start, and xxh3-128 reads 32 GB/s here against SHA-256's 2.
CHECKSUM = "xxh3_128"
# HNSW versions only: the passage row of each FAISS label (see the module docstring).
LABELS = "dense_rows.npy"
# Above this many passages an HNSW graph replaces exact search (see README, "Index"). Measured alone on
# one thread, exact search takes 0.50-0.67 ms at 10,000 passages (1.04-1.20 ms at 21,115) and in the
# server about 1.5 times as long, so 0.8-1 ms here: a third of encoding a question. HNSW takes 0.2 ms.
APPROXIMATE_ABOVE = 10_000
# efSearch 200 and 256 raised recall@100 to 0.989 and 0.993 for 0.06-0.17 ms more: not worth it.
EF_SEARCH = 128


@dataclass(frozen=True)
class DenseIndex:
    """A FAISS index whose search answers passage rows, whatever order its labels are in."""

    index: Any  # a faiss index
    rows: np.ndarray | None = None  # the passage row of each label; None: labels are rows

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def kind(self) -> str:
        """As the manifest's "faiss" field names it."""
        if compression.is_compressed(self.index):
            return compression.KIND
        return "hnsw" if hasattr(self.index, "hnsw") else "flat-ip"

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and passage rows of the k nearest passages to each query; row -1 where fewer were found."""
        scores, labels = self.index.search(queries, k)
        if self.rows is None:
            return scores, labels
        return scores, np.where(labels >= 0, self.rows[labels], -1)


@dataclass(frozen=True)
class IndexData:
    """Everything one index version holds, in memory."""

    # A loaded version holds tables (qa/tables.py: a DocumentTable, a PassageTable, a SentenceTable and the
    # passage table's sentence ranges); a build assembles lists, which write() turns into tables.
    documents: Mapping[str, Document]  # in id order
    chunks: Sequence[Chunk]  # grouped by document, in id order
    vectors: np.ndarray  # one unit row per chunk
    sentences: Sequence[tuple[str, int, int]]  # (doc_id, start, end) of every sentence
    sentence_vectors: np.ndarray  # one unit row per sentence
    chunk_sentences: Sequence[Sequence[int]]  # each chunk's [first, last) rows in sentences
    manifest: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    faiss_index: DenseIndex | None = None
    terms: IndexTerms | None = None  # None: a version from before term files, or another lexicon
    bm25: Bm25Indexes | None = None  # None: not stored (see terms), or nothing to index
    # The staging folder a build already streamed the vector arrays into (see Staging): write() commits that
    # folder instead of writing those arrays again.
    staged: Staging | None = field(default=None, repr=False, compare=False)


def passage_counts(data: IndexData) -> dict[str, int]:
    """How many passages each article of the version has, by id."""
    rows = tables.article_rows(data.documents, data.chunks)
    return dict(zip(data.documents, np.bincount(rows, minlength=len(data.documents)).tolist()))


def digest(algorithm: str = CHECKSUM) -> Any:
    """A new hash of the kind a manifest's "checksum" names (versions written before the field: SHA-256)."""
    if algorithm == "xxh3_128":
        import xxhash

        return xxhash.xxh3_128()
    if algorithm == "sha256":
        return hashlib.sha256()
    raise ValueError(f"unknown checksum {algorithm!r}")


# Files are hashed through memory maps of this many bytes at a time: no copy, and no more than this mapped.
_HASH_WINDOW = 64 << 20


def file_checksum(path: Path, algorithm: str = CHECKSUM) -> str:
    """The file's checksum, read through a window of _HASH_WINDOW bytes mapped at a time."""
    found = digest(algorithm)
    size = path.stat().st_size
    with path.open("rb") as handle:
        for at in range(0, size, _HASH_WINDOW):
            with mmap.mmap(handle.fileno(), min(_HASH_WINDOW, size - at), access=mmap.ACCESS_READ, offset=at) as window:
                found.update(window)
    return found.hexdigest()


def _fsync_write(path: Path, data: bytes) -> str:
    """Write bytes and fsync them; returns their checksum, hashed from memory, not read back."""
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    hashed = digest()
    hashed.update(data)
    return hashed.hexdigest()


def _fsync_array(path: Path, array: np.ndarray) -> str:
    """Save an array as np.save would (format 1.0) and fsync it; returns the file's checksum, hashed from memory."""
    array = np.ascontiguousarray(array)
    header = io.BytesIO()
    npy.write_array_header_1_0(header, npy.header_data_from_array_1_0(array))
    hashed = digest()
    hashed.update(header.getvalue())
    hashed.update(array.reshape(-1).view(np.uint8))
    with path.open("wb") as handle:
        handle.write(header.getvalue())
        array.tofile(handle)
        handle.flush()
        os.fsync(handle.fileno())
    return hashed.hexdigest()


class Staging:
    """The folder a build writes its next version into, before write() makes it live.

    A build streams its vector arrays into it part by part (`rows`), so they are never whole in memory, and
    reads them back memory-mapped: the kernel's page cache holds them, not the process. A crash leaves the
    folder behind for clean_staging, like any staging folder.
    """

    def __init__(self, index_dir: Path) -> None:
        index_dir.mkdir(parents=True, exist_ok=True)
        self.name = f"v-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}"
        self.folder = index_dir / f".tmp-{self.name}"
        self.folder.mkdir()
        self.hashes: dict[str, str] = {}

    def rows(self, filename: str, shape: tuple[int, int], dtype: Any, blocks: Iterable[np.ndarray]) -> np.ndarray:
        """Write an .npy of this shape from consecutive row blocks, fsync it, and return it memory-mapped."""
        path = self.folder / filename
        header = io.BytesIO()
        npy.write_array_header_1_0(header, {"descr": npy.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                                            "shape": shape})
        hashed = digest()
        hashed.update(header.getvalue())
        written = 0
        with path.open("wb") as handle:
            handle.write(header.getvalue())
            for block in blocks:
                block = np.ascontiguousarray(block, dtype=dtype)
                hashed.update(block.reshape(-1).view(np.uint8))
                block.tofile(handle)
                written += len(block)
            handle.flush()
            os.fsync(handle.fileno())
        if written != shape[0]:
            raise ValueError(f"{filename}: {written} rows written, {shape[0]} expected")
        self.hashes[filename] = hashed.hexdigest()
        return np.load(path, mmap_mode="r")

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _pread_all(fd: int, into: np.ndarray, at: int, short: str) -> None:
    """Fill `into` (bytes) from the file at offset `at`; OSError(short) if the file ends first."""
    done = 0
    while done < len(into):
        got = os.preadv(fd, [memoryview(into[done:])], at + done)
        if got <= 0:
            raise OSError(short)
        done += got


class _Descriptor:
    """An open file descriptor, closed when the last RowFile reading through it is gone."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)

    def __del__(self) -> None:
        with contextlib.suppress(AttributeError, OSError):
            os.close(self.fd)


class RowFile:
    """An .npy file's array, its rows read with pread when indexed, never mapped into the process.

    Indexing gives what indexing the array gives (an int, a slice or an array of rows; a copy). A question
    reads a few hundred scattered rows of a large version's vectors: memory-mapped, each read maps the pages
    around it too (on this machine 5,000 random one-byte reads of a 2.2 GB file mapped 2.2 GB of it), and the
    server's resident size grows to the size of its files. Read with pread, only the page cache, shared by
    every process, holds them; and a file damaged in place gives an error, not a SIGBUS.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open("rb") as handle:
            version = npy.read_magic(handle)
            read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
            shape, fortran, dtype = read_header(handle)
            header = handle.tell()
        if fortran or dtype.hasobject:
            raise ValueError(f"{path.name} is not a C-ordered numeric array")
        self.dtype = np.dtype(dtype)
        self._row_shape = tuple(shape[1:])
        self._row_bytes = self.dtype.itemsize * int(np.prod(self._row_shape, dtype=np.int64))
        if path.stat().st_size != header + shape[0] * self._row_bytes:
            raise ValueError(f"{path.name} is not as long as its header says")
        self._offset = header  # of this array's row 0 in the file
        self.shape = tuple(shape)
        self._file = _Descriptor(path)  # shared with windows

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __len__(self) -> int:
        return self.shape[0]

    def window(self, start: int, stop: int) -> RowFile:
        """Rows [start, stop) as a RowFile of their own (same file, same descriptor), reading nothing now."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"rows {start}:{stop} of {len(self)}")
        part = object.__new__(RowFile)
        part.__dict__.update(self.__dict__)
        part._offset = self._offset + start * self._row_bytes
        part.shape = (stop - start, *self._row_shape)
        return part

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, np.integer)):
            row = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= row < len(self):
                raise IndexError(f"row {int(key)} of {len(self)}")
            return self._read(row, row + 1)[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1:
                return self._read(start, max(start, stop))
            key = np.arange(start, stop, step)
        rows = np.asarray(key)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        rows = rows.astype(np.int64, copy=False).reshape(-1)
        rows = np.where(rows < 0, rows + len(self), rows)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"a row is outside the {len(self)} rows")
        return self._take(rows)

    def _take(self, rows: np.ndarray) -> np.ndarray:
        """These rows, in this order: each run of consecutive rows read with one pread."""
        if not len(rows):
            return np.empty((0, *self._row_shape), dtype=self.dtype)
        unique, inverse = np.unique(rows, return_inverse=True)
        found = np.empty((len(unique), *self._row_shape), dtype=self.dtype)
        bytes_ = found.reshape(-1).view(np.uint8)
        breaks = np.flatnonzero(np.diff(unique) != 1) + 1
        for first, last in zip(np.concatenate([[0], breaks]).tolist(), np.concatenate([breaks, [len(unique)]]).tolist()):
            self._pread(bytes_[first * self._row_bytes:last * self._row_bytes], int(unique[first]))
        return found[inverse.reshape(-1)]

    def _read(self, start: int, stop: int) -> np.ndarray:
        found = np.empty((stop - start, *self._row_shape), dtype=self.dtype)
        if stop > start:
            self._pread(found.reshape(-1).view(np.uint8), start)
        return found

    def _pread(self, into: np.ndarray, row: int) -> None:
        _pread_all(self._file.fd, into, self._offset + row * self._row_bytes,
                   f"{self.path.name} ends early: it was damaged after it was opened")

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self._read(0, len(self))
        return whole if dtype is None else whole.astype(dtype, copy=False)

    def astype(self, dtype: Any, copy: bool = True) -> np.ndarray:
        return np.asarray(self).astype(dtype, copy=copy)


class Spill:
    """Vectors a build has made but not yet written into its version, kept in files instead of memory.

    A build holds every new article's vectors until it writes the version (in id order, after the last is
    embedded): 1.5 KB a passage and as much a sentence in float32, some 18 GB for three million passages.
    Spilled, they wait in one append-only file per kind, in the system's temporary folder (removed by
    close(), or with the folder by the system after a crash), and are read back once, as the version is
    written. Not fsynced: a build that does not finish uses none of it.
    """

    def __init__(self) -> None:
        import tempfile

        self._folder = tempfile.TemporaryDirectory(prefix="qa-spill-")
        self._files: dict[tuple[str, tuple[int, ...]], tuple[Any, int]] = {}  # (dtype, row shape) -> (file, rows)

    def put(self, array: np.ndarray) -> SpilledRows:
        """Append these rows; returns them as rows to read back later."""
        array = np.ascontiguousarray(array)
        key = (array.dtype.str, tuple(array.shape[1:]))
        handle, rows = self._files.get(key, (None, 0))
        if handle is None:  # kept open until close(): each put appends to it
            handle = (Path(self._folder.name) / f"{len(self._files)}.bin").open("w+b")
        handle.write(array.reshape(-1).view(np.uint8).tobytes() if array.size else b"")
        handle.flush()
        self._files[key] = (handle, rows + len(array))
        return SpilledRows(handle.fileno(), rows, len(array), array.dtype, tuple(array.shape[1:]))

    def close(self) -> None:
        for handle, _ in self._files.values():
            handle.close()
        self._files.clear()
        self._folder.cleanup()


@dataclass(frozen=True)
class SpilledRows:
    """Rows of a Spill, read back whole by np.asarray (as a build's assemble does) while the Spill is open."""

    fd: int
    first: int
    count: int
    dtype: np.dtype
    row_shape: tuple[int, ...]

    def __len__(self) -> int:
        return self.count

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.count, *self.row_shape)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        found = np.empty(self.shape, dtype=self.dtype)
        row_bytes = self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64))
        _pread_all(self.fd, found.reshape(-1).view(np.uint8), self.first * row_bytes, "a spilled vector file ended early")
        return found if dtype is None else found.astype(dtype, copy=False)


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _bm25_names(kind: str) -> dict[str, str]:
    return {argument: f"bm25-{kind}.{part}" for argument, part in _BM25_PARTS.items()}


def _write_terms(folder: Path, terms: IndexTerms) -> dict[str, str]:
    """Save the index terms; returns the checksum of each file written, by name."""
    ids, offsets = pack(terms)
    vocabulary = json.dumps({"vocabulary": list(terms.vocabulary)}, ensure_ascii=False).encode()
    return {"terms.json": _fsync_write(folder / "terms.json", vocabulary),
            "term_ids.npy": _fsync_array(folder / "term_ids.npy", ids),
            "term_offsets.npy": _fsync_array(folder / "term_offsets.npy", offsets)}


def _write_bm25(folder: Path, bm25: Bm25Indexes) -> dict[str, str]:
    """Save the bm25s indexes; returns the checksum of each file written, by name."""
    for kind in _BM25_KINDS:
        getattr(bm25, kind).save(folder, show_progress=False, **_bm25_names(kind))
    hashes = {}
    for filename in BM25_FILES:  # bm25s writes these itself: hashed from the files
        _fsync_file(folder / filename)
        hashes[filename] = file_checksum(folder / filename)
    return hashes


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_faiss_index(vectors: np.ndarray) -> Any:
    """Exact inner product (cosine, as rows are unit length); HNSW for large corpora."""
    import faiss

    dimension = vectors.shape[1]
    if len(vectors) > APPROXIMATE_ABOVE:
        index = faiss.IndexHNSWFlat(dimension, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = EF_SEARCH
    else:
        index = faiss.IndexFlatIP(dimension)
    if len(vectors):
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def dense_index(data: IndexData, base: IndexData | None = None) -> DenseIndex:
    """The FAISS index of `data`: `base`'s HNSW graph grown by the new passages if `data` only adds articles.

    Anything else (a removed or changed article, exact search, no base) builds the index anew. Above
    compression.COMPRESS_ABOVE passages the index is compressed (IVF-SQ8), grown the same way.
    """
    if compression.applies(len(data.vectors)):
        kept = None
        if base is not None and isinstance(base.faiss_index, DenseIndex) and base.faiss_index.kind == compression.KIND:
            kept = _rows_kept(base, data)
        if kept is None:
            return DenseIndex(compression.make_index(data.vectors))
        return DenseIndex(*compression.grow(base.faiss_index.index, base.faiss_index.rows, kept, data.vectors))
    if len(data.vectors) > APPROXIMATE_ABOVE and base is not None and isinstance(base.faiss_index, DenseIndex) \
            and base.faiss_index.kind == "hnsw":
        new_rows = _rows_kept(base, data)
        if new_rows is not None:
            return _grow(base.faiss_index, new_rows, data.vectors)
    index = make_faiss_index(data.vectors)
    return DenseIndex(index, np.arange(len(data.vectors), dtype=np.int64) if hasattr(index, "hnsw") else None)


def _rows_kept(base: IndexData, data: IndexData) -> np.ndarray | None:
    """Where each passage row of `base` is in `data`; None unless every article of `base` is in `data` unchanged."""
    for doc_id in base.documents:  # content hashes from the tables' columns: no record decoded
        kept = tables.content_hash(data.documents, doc_id)
        if kept is None or kept != tables.content_hash(base.documents, doc_id):
            return None
    # The same articles with the same texts and chunking have the same passages, in the same order.
    owners, positions = tables.keys(data.chunks)
    base_owners, base_positions = tables.keys(base.chunks)
    found = [row for row, owner in enumerate(owners) if owner in base.documents]
    same = len(found) == len(base_owners) and all(
        (owners[row], positions[row]) == key for row, key in zip(found, zip(base_owners, base_positions)))
    if not same:
        return None
    rows = np.array(found, dtype=np.int64)
    # The graph holds base's vectors: reuse it only if they are the very vectors of those rows now
    # (compared a block at a time, not gathered into a copy of the whole matrix first).
    block = 4096
    for at in range(0, len(rows), block):
        if not np.array_equal(base.vectors[at:at + block], data.vectors[rows[at:at + block]]):
            return None
    return rows


def _grow(base: DenseIndex, new_rows: np.ndarray, vectors: np.ndarray) -> DenseIndex:
    """A copy of `base`'s graph with the passages it lacks added; `new_rows` maps its rows to rows of `vectors`."""
    import faiss

    # The live version serves questions from base.index on other threads: add to a copy only.
    index = faiss.clone_index(base.index)
    index.hnsw.efSearch = EF_SEARCH
    labelled = new_rows if base.rows is None else new_rows[base.rows]
    added = np.setdiff1d(np.arange(len(vectors), dtype=np.int64), new_rows)
    if len(added):
        index.add(np.ascontiguousarray(vectors[added], dtype=np.float32))
    return DenseIndex(index, np.concatenate([labelled, added]))


def compatibility(model: str, dimension: int | None, chunking: dict[str, int]) -> dict[str, Any]:
    """The manifest fields that must match for an index to be reused as it is."""
    return {
        "format_version": FORMAT_VERSION,
        "cleaning_version": CLEANING_VERSION,
        "model": model,
        "dimension": dimension,
        "chunking": chunking,
    }


def write(index_dir: Path, data: IndexData, settings_fields: dict[str, Any], base: IndexData | None = None,
          bm25: Future[Bm25Indexes | None] | None = None, cancel: threading.Event | None = None) -> IndexData:
    """Write a new version beside the live one and make it live; returns it as load() would give it.

    `base` is the version `data` was built from, if any: its HNSW graph is grown rather than rebuilt
    when `data` only adds articles to it (see dense_index). `bm25`, if given, is data's bm25s indexes
    still being built (see indexing.build): waited for only once the other files are written.
    `cancel`, if set before the swap, leaves the live version as it is (BuildCancelled).
    """
    if data.terms is None:
        raise ValueError("an index version needs its terms (see indexing.assemble)")
    staged = data.staged or Staging(index_dir)
    name, staging = staged.name, staged.folder
    try:
        counts = passage_counts(data)
        files, dense = _write_core(staging, data, counts, base, staged.hashes)
        files.update(_write_terms(staging, data.terms))
        if bm25 is not None:
            data = replace(data, bm25=bm25.result())
        if data.bm25 is not None:
            files.update(_write_bm25(staging, data.bm25))
        manifest = {
            **compatibility(settings_fields["model"], int(data.vectors.shape[1]), settings_fields["chunking"]),
            "lexicon_version": LEXICON_VERSION,
            "faiss": dense.kind,
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "built_by": f"qa {_package_version()}",
            "version": name,
            "counts": {"documents": len(data.documents), "passages": len(data.chunks), "sentences": len(data.sentences)},
            # In FILES order, then LABELS: as every version has listed them.
            "files": {filename: files[filename] for filename in (*FILES, LABELS) if filename in files},
            "checksum": CHECKSUM,
        }
        _fsync_write(staging / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False).encode())
        fsync_dir(staging)
        if cancel is not None and cancel.is_set():
            raise BuildCancelled("the index update was cancelled; the previous version is still the live one")
        os.rename(staging, index_dir / name)
        pointer = index_dir / f".{CURRENT}.{name}"
        _fsync_write(pointer, name.encode())
        os.replace(pointer, index_dir / CURRENT)
        fsync_dir(index_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _prune(index_dir, keep={name})
    folder = index_dir / name
    mapped = maps(folder, dense.kind == compression.KIND)
    documents, chunks, sentences = open_tables(folder, mapped)
    live = replace(data, documents=documents, chunks=chunks, sentences=sentences,
                   chunk_sentences=chunks.sentence_ranges, manifest=_lean(manifest), version=name, faiss_index=dense,
                   staged=None)
    if data.staged is not None:
        # As load() would open them (mapped afresh when large: the pages the FAISS build read stay in the page
        # cache, out of this process's memory).
        vectors, sentence_vectors = open_vectors(folder, mapped)
        live = replace(live, vectors=vectors, sentence_vectors=sentence_vectors)
    return live


def _lean(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest as a loaded version keeps it: without the per-article entries versions written before the
    tables held (the tables hold those; at a million passages they are 400,000 dicts)."""
    return {key: value for key, value in manifest.items() if key != "documents"}


def content_hashes(index_dir: Path) -> dict[str, str]:
    """The content hash of every article the live version holds, by id, without loading the version."""
    manifest = read_manifest(index_dir)
    if "documents" in manifest:  # written before the tables
        return {doc_id: entry.get("content_hash") for doc_id, entry in manifest["documents"].items()}
    path = index_dir / manifest.get("version", "") / "articles.json"
    try:
        columns = json.loads(path.read_text(encoding="utf-8"))
        if "content_hash" not in columns:  # a version whose tables lack the column: read the records
            return {doc_id: doc.content_hash for doc_id, doc in load(index_dir).documents.items()}
        return dict(zip(columns["doc_id"], columns["content_hash"], strict=True))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IndexCorrupt(f"{path} is unreadable ({exc}); run `qa index --full` to rebuild the index") from None


# Vector files larger than this (together) are read from the files as questions need them, not into memory.
MAP_ABOVE_BYTES = 64 << 20


def maps(folder: Path, compressed: bool) -> bool:
    """Whether a version is served from its files (see open_vectors): when compressed or its vectors are large."""
    paths = (folder / "vectors.npy", folder / "sentence_vectors.npy")
    return compressed or sum(path.stat().st_size for path in paths) > MAP_ABOVE_BYTES


def open_vectors(folder: Path, mapped: bool) -> tuple[np.ndarray, np.ndarray]:
    """A version's passage and sentence vectors: read into memory, or RowFiles when compressed or large
    (`mapped`, see maps()).

    As RowFiles, a question reads the few hundred rows it needs and the page cache (shared by every process
    serving the version) holds them, not each process (64 MB is about 10,000 passages with their sentences;
    SciFact's 17,568 passages hold 104 MB). A file damaged in place under a running server then fails the
    questions that read it, where a version read into memory keeps answering.
    """
    paths = (folder / "vectors.npy", folder / "sentence_vectors.npy")
    vectors, sentence_vectors = (_array(path, mapped) for path in paths)
    return vectors, sentence_vectors


def _array(path: Path, mapped: bool) -> Any:
    """An .npy file's array: read into memory, or as a RowFile when `mapped` (a large version)."""
    return RowFile(path) if mapped else np.load(path, allow_pickle=False)


def _write_tables(folder: Path, data: IndexData, counts: dict[str, int]) -> dict[str, str]:
    """Save the articles and the passage and sentence rows (TABLE_FILES); returns each file's checksum by name."""
    documents = data.documents
    if isinstance(documents, tables.DocumentTable):  # copied as stored: no record decoded
        columns = {"doc_id": documents.ids, "source": documents.sources, "published": documents.published,
                   "content_hash": documents.hashes}
        records, offsets = documents.stored()
    else:
        docs = list(documents.values())
        columns = {"doc_id": [d.doc_id for d in docs], "source": [d.source for d in docs],
                   "published": [d.published for d in docs], "content_hash": [d.content_hash for d in docs]}
        records, offsets = tables.encode_records(tables.record(d, counts.get(d.doc_id, 0)) for d in docs)
        del docs
    passages, sentences = tables.rows_of(documents, data.chunks, data.sentences, data.chunk_sentences)
    return {"articles.json": _fsync_write(folder / "articles.json", json.dumps(columns, ensure_ascii=False).encode()),
            "articles.jsonl": _fsync_write(folder / "articles.jsonl", records),
            "articles.npy": _fsync_array(folder / "articles.npy", offsets),
            "passages.npy": _fsync_array(folder / "passages.npy", passages),
            "sentences.npy": _fsync_array(folder / "sentences.npy", sentences)}


def open_tables(folder: Path, mapped: bool) -> tuple[tables.DocumentTable, tables.PassageTable, tables.SentenceTable]:
    """A version's articles, passages and sentences (TABLE_FILES), memory-mapped when `mapped`.

    ValueError if they do not fit together: rows pointing outside the articles or sentences, records that do not
    cover their file.
    """
    columns = json.loads((folder / "articles.json").read_text(encoding="utf-8"))
    ids, sources, published = columns["doc_id"], columns["source"], columns["published"]
    hashes = columns.get("content_hash")  # read from the records below when a version lacks the column
    path = folder / "articles.jsonl"
    size = path.stat().st_size
    records: Any = np.memmap(path, dtype=np.uint8, mode="r") if mapped and size else path.read_bytes()
    offsets = _array(folder / "articles.npy", False)
    # A tenth of the vectors' size at most: memory-mapped (questions index them by row and column).
    passages, sentences = (np.load(folder / name, allow_pickle=False, mmap_mode="r" if mapped else None)
                           for name in ("passages.npy", "sentences.npy"))
    if offsets.ndim != 1 or len(offsets) != len(ids) + 1 or offsets[0] != 0 or offsets[-1] != size \
            or np.any(np.diff(offsets) <= 0):
        raise ValueError("the article records do not match their offsets")
    for name, rows, width in (("passage", passages, tables.PASSAGE_COLUMNS), ("sentence", sentences,
                                                                             tables.SENTENCE_COLUMNS)):
        if rows.ndim != 2 or rows.shape[1] != width or rows.dtype != np.int64:
            raise ValueError(f"the {name} rows have the wrong shape or type")
        if len(rows) and (rows[:, 0].min() < 0 or rows[:, 0].max() >= len(ids)):
            raise ValueError(f"a {name} row names no article")
    if len(passages) and (passages[:, 4].min() < 0 or passages[:, 5].max() > len(sentences)
                          or np.any(passages[:, 5] < passages[:, 4])):
        raise ValueError("a passage's sentence rows are out of range")
    if hashes is None:
        unhashed = tables.DocumentTable(ids, sources, published, records, offsets, [""] * len(ids))
        hashes = [unhashed.record(row)["content_hash"] for row in range(len(ids))]
    documents = tables.DocumentTable(ids, sources, published, records, offsets, hashes)
    sentence_table = tables.SentenceTable(documents.ids, sentences)
    return documents, tables.PassageTable(documents, passages, sentence_table), sentence_table


def _read_json_tables(folder: Path) -> tuple[tables.DocumentTable, tables.PassageTable, tables.SentenceTable]:
    """The tables of a version written before them, from its documents.json and passages.json (held in memory)."""
    records = json.loads((folder / "documents.json").read_text(encoding="utf-8"))
    stored = json.loads((folder / "passages.json").read_text(encoding="utf-8"))
    documents = tables.DocumentTable.from_records(records)  # the same records the tables store
    row_of = {doc_id: row for row, doc_id in enumerate(documents.ids)}
    passage_rows = np.array([(row_of[p["doc_id"]], p["position"], p["start"], p["end"], *p["sentences"])
                             for p in stored["passages"]], dtype=np.int64)
    sentence_table = tables.SentenceTable(documents.ids, tables.sentence_rows(stored["sentences"], row_of))
    return (documents, tables.PassageTable(documents, passage_rows.reshape(-1, tables.PASSAGE_COLUMNS), sentence_table),
            sentence_table)


def _write_core(folder: Path, data: IndexData, counts: dict[str, int], base: IndexData | None,
                written: dict[str, str]) -> tuple[dict[str, str], DenseIndex]:
    """Save the articles, passages, vectors and FAISS index; returns each file's checksum by name, and the FAISS index.

    `written`: files a build has already streamed into the folder (see Staging), with their checksums.
    """
    import faiss

    hashes = {**_write_tables(folder, data, counts), **written}
    for filename, array in (("vectors.npy", data.vectors), ("sentence_vectors.npy", data.sentence_vectors)):
        if filename not in written:
            hashes[filename] = _fsync_array(folder / filename,
                                            array.astype(compression.vector_dtype(len(data.chunks)), copy=False))
    dense = dense_index(data, base)
    faiss.write_index(dense.index, str(folder / "dense.faiss"))
    _fsync_file(folder / "dense.faiss")
    hashes["dense.faiss"] = file_checksum(folder / "dense.faiss")  # read back: serialising to memory first costs a copy
    if dense.rows is not None:
        hashes[LABELS] = _fsync_array(folder / LABELS, dense.rows)
    return hashes, dense


def _prune(index_dir: Path, keep: set[str]) -> None:
    """Remove versions older than the live one and its predecessor, and stale staging folders."""
    versions = sorted(p for p in index_dir.glob("v-*") if p.is_dir())
    keep_names = keep | {p.name for p in versions[-2:]}
    for path in versions:
        if path.name not in keep_names:
            shutil.rmtree(path, ignore_errors=True)


def clean_staging(index_dir: Path) -> None:
    """Remove what interrupted builds left behind; call only while holding the build lock."""
    for path in index_dir.glob(".tmp-*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in index_dir.glob(f".{CURRENT}.*"):
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def build_lock(index_dir: Path, wait: float = 0.0, cancel: threading.Event | None = None) -> Iterator[None]:
    """Hold the index folder's build lock, waiting up to `wait` seconds for another process's build to end.

    Raises IndexBusy if it is still held then, and BuildCancelled if `cancel` is set while waiting.
    """
    index_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait
    stop = cancel or threading.Event()
    with (index_dir / LOCK).open("a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            if time.monotonic() >= deadline:
                raise IndexBusy(f"another build is updating {index_dir}; wait for it to finish")
            # flock cannot time out by itself: poll, so that a cancelled wait ends at once.
            if stop.wait(0.05):
                raise BuildCancelled("the index update was cancelled; nothing was changed")
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def current_version(index_dir: Path) -> str | None:
    pointer = index_dir / CURRENT
    if not pointer.is_file():
        return None
    try:
        return pointer.read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError) as exc:
        raise IndexCorrupt(f"{pointer} is unreadable ({exc}); run `qa index --full` to rebuild the index") from None


def read_manifest(index_dir: Path) -> dict[str, Any]:
    """The live version's manifest; IndexMissing or IndexCorrupt if it cannot be read."""
    name = current_version(index_dir)
    if name is None:
        raise IndexMissing(f"no index in {index_dir}; run `qa index` to build one")
    path = index_dir / name / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IndexCorrupt(f"index manifest {path} is unreadable ({exc}); run `qa index --full` to rebuild") from None


def check_compatible(manifest: dict[str, Any], expected: dict[str, Any]) -> None:
    """Refuse an index built by another model, format or chunking, saying how to rebuild."""
    for key in ("format_version", "cleaning_version", "model", "chunking"):
        if manifest.get(key) != expected[key]:
            raise IndexIncompatible(
                f"the index was built with {key} {manifest.get(key)!r}, not {expected[key]!r}; "
                "run `qa index --full` to rebuild it"
            )
    if expected.get("dimension") is not None and manifest.get("dimension") != expected["dimension"]:
        raise IndexIncompatible(
            f"the index has {manifest.get('dimension')}-dimensional vectors but the model gives "
            f"{expected['dimension']}; run `qa index --full` to rebuild it"
        )


def load(index_dir: Path, verify: bool = True) -> IndexData:
    """Load the live version, checking every file against its checksum."""
    manifest = read_manifest(index_dir)
    folder = index_dir / manifest.get("version", "")
    rebuild = "run `qa index --full` to rebuild it"
    listed = manifest.get("files")
    listed = listed if isinstance(listed, dict) else {}
    # Term files count only when written by this lexicon; otherwise terms are derived from the texts.
    has_terms = manifest.get("lexicon_version") == LEXICON_VERSION and all(name in listed for name in TERM_FILES)
    has_bm25 = has_terms and all(name in listed for name in BM25_FILES)
    has_tables = all(name in listed for name in TABLE_FILES)
    expected = (CORE_FILES if has_tables else JSON_CORE_FILES) + (TERM_FILES if has_terms else ())
    expected += (BM25_FILES if has_bm25 else ()) + ((LABELS,) if LABELS in listed else ())
    if verify:
        algorithm = manifest.get("checksum", "sha256")
        if algorithm not in ("sha256", CHECKSUM):
            raise IndexCorrupt(f"index manifest names an unknown checksum {algorithm!r}; {rebuild}")
        missing = [name for name in expected if not (folder / name).is_file()]
        if missing:
            raise IndexCorrupt(f"index file {', '.join(missing)} is missing; {rebuild}")
        for filename in expected:
            if listed.get(filename) != file_checksum(folder / filename, algorithm):
                raise IndexCorrupt(f"index file {filename} is damaged (checksum mismatch); {rebuild}")
    try:
        compressed = manifest.get("faiss") == compression.KIND
        mapped = maps(folder, compressed)
        documents, chunks, sentences = open_tables(folder, mapped) if has_tables else _read_json_tables(folder)
        vectors, sentence_vectors = open_vectors(folder, mapped)
        faiss_index = _read_dense(folder, LABELS in listed, compressed)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise IndexCorrupt(f"index in {folder} cannot be read ({exc}); {rebuild}") from None
    if len(chunks) != len(vectors) or faiss_index.ntotal != len(chunks) or len(sentences) != len(sentence_vectors):
        raise IndexCorrupt(f"index in {folder} has mismatched parts; {rebuild}")
    terms = None
    if has_terms:
        try:
            # Mapped term ids are range-checked by their checksum only: reading all of them would bring every
            # page of the file into this process.
            terms = _read_terms(folder, len(chunks), len(documents), len(sentences), mapped and verify)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IndexCorrupt(f"index terms in {folder} cannot be read ({exc}); {rebuild}") from None
    return IndexData(documents, chunks, vectors, sentences, sentence_vectors, chunks.sentence_ranges,
                     _lean(manifest), manifest["version"], faiss_index, terms,
                     _read_bm25(folder, mapped) if has_bm25 else None)


def _read_dense(folder: Path, labelled: bool, compressed: bool = False) -> DenseIndex:
    """The stored FAISS index, with its label-to-row map if the version has one."""
    import faiss

    path = str(folder / "dense.faiss")
    index = compression.read(path) if compressed else faiss.read_index(path)
    if not labelled:
        return DenseIndex(index)
    rows = np.load(folder / LABELS, allow_pickle=False)
    # Every passage row once: anything else would answer wrong passages, not just fewer.
    if rows.ndim != 1 or len(rows) != index.ntotal or not np.array_equal(np.sort(rows), np.arange(len(rows))):
        raise ValueError(f"{LABELS} does not map the {index.ntotal} labels to distinct passage rows")
    return DenseIndex(index, rows.astype(np.int64, copy=False))


def _read_terms(folder: Path, passages: int, articles: int, sentences: int, mapped: bool = False) -> IndexTerms:
    """The stored terms; `mapped`: the term ids read from the file as needed (a RowFile), not range-checked one
    by one."""
    vocabulary = json.loads((folder / "terms.json").read_text(encoding="utf-8"))["vocabulary"]
    if not isinstance(vocabulary, list):
        raise ValueError("the vocabulary is not a list")
    ids = _array(folder / "term_ids.npy", mapped)
    offsets = np.load(folder / "term_offsets.npy", allow_pickle=False)
    return unpack(vocabulary, ids, offsets, passages, articles, sentences, check_ids=not mapped)


def _read_bm25(folder: Path, mapped: bool = False) -> Bm25Indexes | None:
    """The stored bm25s indexes (their entries read from the files as needed when `mapped`), or None if this
    bm25s cannot read them (they are then built from the terms)."""
    bm25s = import_bm25s()
    try:
        passages, articles = (bm25s.BM25.load(folder, show_progress=False, mmap=mapped, **_bm25_names(kind))
                              for kind in _BM25_KINDS)
        if mapped:  # a question reads its terms' entries: read them with pread, as the vectors (see RowFile)
            for kind, index in zip(_BM25_KINDS, (passages, articles)):
                for key, argument in (("data", "data_name"), ("indices", "indices_name")):
                    index.scores[key] = RowFile(folder / _bm25_names(kind)[argument])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Bm25Indexes(passages, articles)


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("qa")
    except Exception:  # not installed, e.g. run from a source tree
        return "dev"
