"""The only code that touches the index folder: versions, manifest, arrays, atomic swaps.

Layout: each build is written to a hidden temporary folder, renamed to `v-<time>-<id>/`, and
then `CURRENT` (a one-line file naming the live version) is replaced atomically. A crash at any
moment leaves either the old or the new version named in CURRENT, both complete.

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
import os
import shutil
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import numpy.lib.format as npy

from . import compression
from .chunking import Chunk
from .documents import CLEANING_VERSION, Document
from .errors import BuildCancelled, IndexBusy, IndexCorrupt, IndexIncompatible, IndexMissing
from .lexical import LEXICON_VERSION, Bm25Indexes, IndexTerms, import_bm25s, pack, unpack

# Term files were added without a format change: older versions still load (see the module docstring).
FORMAT_VERSION = 1
CURRENT = "CURRENT"
LOCK = ".lock"
MANIFEST = "manifest.json"
CORE_FILES = ("documents.json", "passages.json", "vectors.npy", "sentence_vectors.npy", "dense.faiss")
TERM_FILES = ("terms.json", "term_ids.npy", "term_offsets.npy")
# bm25s saves an index as five files; each one's name here, by the bm25s.BM25.save argument naming it.
_BM25_PARTS = {"data_name": "data.npy", "indices_name": "indices.npy", "indptr_name": "indptr.npy",
               "vocab_name": "vocab.json", "params_name": "params.json"}
_BM25_KINDS = ("passages", "articles")
BM25_FILES = tuple(f"bm25-{kind}.{part}" for kind in _BM25_KINDS for part in _BM25_PARTS.values())
FILES = CORE_FILES + TERM_FILES + BM25_FILES
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

    documents: dict[str, Document]  # in id order
    chunks: list[Chunk]  # grouped by document, in id order
    vectors: np.ndarray  # one unit row per chunk
    sentences: list[tuple[str, int, int]]  # (doc_id, start, end) of every sentence
    sentence_vectors: np.ndarray  # one unit row per sentence
    chunk_sentences: list[tuple[int, int]]  # each chunk's [first, last) rows in sentences
    manifest: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    faiss_index: DenseIndex | None = None
    terms: IndexTerms | None = None  # None: a version from before term files, or another lexicon
    bm25: Bm25Indexes | None = None  # None: not stored (see terms), or nothing to index
    # The staging folder a build already streamed the vector arrays into (see Staging): write() commits that
    # folder instead of writing those arrays again.
    staged: Staging | None = field(default=None, repr=False, compare=False)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_write(path: Path, data: bytes) -> str:
    """Write bytes and fsync them; returns their SHA-256, hashed from memory, not read back."""
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return hashlib.sha256(data).hexdigest()


def _fsync_array(path: Path, array: np.ndarray) -> str:
    """Save an array as np.save would (format 1.0) and fsync it; returns the file's SHA-256, hashed from memory."""
    array = np.ascontiguousarray(array)
    header = io.BytesIO()
    npy.write_array_header_1_0(header, npy.header_data_from_array_1_0(array))
    digest = hashlib.sha256(header.getvalue())
    digest.update(array.reshape(-1).view(np.uint8))
    with path.open("wb") as handle:
        handle.write(header.getvalue())
        array.tofile(handle)
        handle.flush()
        os.fsync(handle.fileno())
    return digest.hexdigest()


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
        digest = hashlib.sha256(header.getvalue())
        written = 0
        with path.open("wb") as handle:
            handle.write(header.getvalue())
            for block in blocks:
                block = np.ascontiguousarray(block, dtype=dtype)
                digest.update(block.reshape(-1).view(np.uint8))
                block.tofile(handle)
                written += len(block)
            handle.flush()
            os.fsync(handle.fileno())
        if written != shape[0]:
            raise ValueError(f"{filename}: {written} rows written, {shape[0]} expected")
        self.hashes[filename] = digest.hexdigest()
        return np.load(path, mmap_mode="r")

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _bm25_names(kind: str) -> dict[str, str]:
    return {argument: f"bm25-{kind}.{part}" for argument, part in _BM25_PARTS.items()}


def _write_terms(folder: Path, terms: IndexTerms) -> dict[str, str]:
    """Save the index terms; returns the SHA-256 of each file written, by name."""
    ids, offsets = pack(terms)
    vocabulary = json.dumps({"vocabulary": list(terms.vocabulary)}, ensure_ascii=False).encode()
    return {"terms.json": _fsync_write(folder / "terms.json", vocabulary),
            "term_ids.npy": _fsync_array(folder / "term_ids.npy", ids),
            "term_offsets.npy": _fsync_array(folder / "term_offsets.npy", offsets)}


def _write_bm25(folder: Path, bm25: Bm25Indexes) -> dict[str, str]:
    """Save the bm25s indexes; returns the SHA-256 of each file written, by name."""
    for kind in _BM25_KINDS:
        getattr(bm25, kind).save(folder, show_progress=False, **_bm25_names(kind))
    hashes = {}
    for filename in BM25_FILES:  # bm25s writes these itself: hashed from the files
        _fsync_file(folder / filename)
        hashes[filename] = file_sha256(folder / filename)
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
    for doc_id, doc in base.documents.items():
        kept = data.documents.get(doc_id)
        if kept is None or kept.content_hash != doc.content_hash:
            return None
    # The same articles with the same texts and chunking have the same passages, in the same order.
    found = [row for row, chunk in enumerate(data.chunks) if chunk.doc_id in base.documents]
    same = len(found) == len(base.chunks) and all(
        (data.chunks[row].doc_id, data.chunks[row].position) == (chunk.doc_id, chunk.position)
        for row, chunk in zip(found, base.chunks))
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


def _document_record(doc: Document, passages: int) -> dict[str, Any]:
    return {
        "doc_id": doc.doc_id, "title": doc.title, "source": doc.source, "published": doc.published,
        "url": doc.url, "content_hash": doc.content_hash, "passages": passages, "text": doc.text,
    }


def _passages_json(data: IndexData) -> bytes:
    """passages.json: what json.dumps gives for {"passages": [...], "sentences": [...]}, formatted directly.

    Each passage as a dict and each sentence as a list would be 100,000 containers for the garbage
    collector to walk, and three times as slow; tests/test_index.py checks the bytes against json.dumps.
    """
    quoted = {doc_id: json.dumps(doc_id) for doc_id in data.documents}
    passages = ", ".join([
        f'{{"doc_id": {quoted[c.doc_id]}, "position": {c.position:d}, "start": {c.start:d}, "end": {c.end:d}, '
        f'"sentences": [{first:d}, {last:d}]}}'
        for c, (first, last) in zip(data.chunks, data.chunk_sentences)
    ])
    sentences = ", ".join([f"[{quoted[doc_id]}, {start:d}, {end:d}]" for doc_id, start, end in data.sentences])
    return f'{{"passages": [{passages}], "sentences": [{sentences}]}}'.encode()


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
        counts: dict[str, int] = {}
        for chunk in data.chunks:
            counts[chunk.doc_id] = counts.get(chunk.doc_id, 0) + 1
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
            "documents": {doc.doc_id: {"content_hash": doc.content_hash, "passages": counts.get(doc.doc_id, 0)}
                          for doc in data.documents.values()},
            # In FILES order, then LABELS: as every version has listed them.
            "files": {filename: files[filename] for filename in (*FILES, LABELS) if filename in files},
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
    live = replace(data, manifest=manifest, version=name, faiss_index=dense, staged=None)
    if data.staged is not None:
        # As load() would open them (mapped afresh when large: the pages the FAISS build read stay in the page
        # cache, out of this process's memory).
        vectors, sentence_vectors = open_vectors(index_dir / name, dense.kind == compression.KIND)
        live = replace(live, vectors=vectors, sentence_vectors=sentence_vectors)
    return live


# Vector files larger than this (together) are served memory-mapped rather than read into memory.
MAP_ABOVE_BYTES = 64 << 20


def open_vectors(folder: Path, compressed: bool) -> tuple[np.ndarray, np.ndarray]:
    """A version's passage and sentence vectors: read into memory, or memory-mapped when compressed or large.

    Mapped, a question reads the few hundred rows it needs and the page cache (shared by every process serving
    the version) holds them, not each process (64 MB is about 10,000 passages with their sentences; SciFact's
    17,568 passages hold 104 MB). The price: the files are only ever written whole into a new version's folder, but one
    damaged in place (truncated) under a running server would stop it (SIGBUS) instead of leaving it answering
    from memory, as a version read into memory does.
    """
    paths = (folder / "vectors.npy", folder / "sentence_vectors.npy")
    mapped = compressed or sum(path.stat().st_size for path in paths) > MAP_ABOVE_BYTES
    vectors, sentence_vectors = (np.load(path, allow_pickle=False, mmap_mode="r" if mapped else None) for path in paths)
    return vectors, sentence_vectors


def _write_core(folder: Path, data: IndexData, counts: dict[str, int], base: IndexData | None,
                written: dict[str, str]) -> tuple[dict[str, str], DenseIndex]:
    """Save the texts, passages, vectors and FAISS index; returns each file's SHA-256 by name, and the FAISS index.

    `written`: files a build has already streamed into the folder (see Staging), with their SHA-256.
    """
    import faiss

    documents = [_document_record(doc, counts.get(doc.doc_id, 0)) for doc in data.documents.values()]
    hashes = {"documents.json": _fsync_write(folder / "documents.json",
                                             json.dumps(documents, ensure_ascii=False).encode()),
              "passages.json": _fsync_write(folder / "passages.json", _passages_json(data)), **written}
    for filename, array in (("vectors.npy", data.vectors), ("sentence_vectors.npy", data.sentence_vectors)):
        if filename not in written:
            hashes[filename] = _fsync_array(folder / filename,
                                            array.astype(compression.vector_dtype(len(data.chunks)), copy=False))
    dense = dense_index(data, base)
    faiss.write_index(dense.index, str(folder / "dense.faiss"))
    _fsync_file(folder / "dense.faiss")
    hashes["dense.faiss"] = file_sha256(folder / "dense.faiss")  # read back: serialising to memory first costs a copy
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
    expected = CORE_FILES + (TERM_FILES if has_terms else ()) + (BM25_FILES if has_bm25 else ())
    expected += (LABELS,) if LABELS in listed else ()
    if verify:
        missing = [name for name in expected if not (folder / name).is_file()]
        if missing:
            raise IndexCorrupt(f"index file {', '.join(missing)} is missing; {rebuild}")
        for filename in expected:
            if listed.get(filename) != file_sha256(folder / filename):
                raise IndexCorrupt(f"index file {filename} is damaged (checksum mismatch); {rebuild}")
    try:
        records = json.loads((folder / "documents.json").read_text(encoding="utf-8"))
        stored = json.loads((folder / "passages.json").read_text(encoding="utf-8"))
        compressed = manifest.get("faiss") == compression.KIND
        vectors, sentence_vectors = open_vectors(folder, compressed)
        faiss_index = _read_dense(folder, LABELS in listed, compressed)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise IndexCorrupt(f"index in {folder} cannot be read ({exc}); {rebuild}") from None
    documents = {}
    for r in records:
        documents[r["doc_id"]] = Document(
            r["doc_id"], r["title"], r["source"], r["published"], r["url"], r["text"], r["content_hash"]
        )
    sentences = [(d, s, e) for d, s, e in stored["sentences"]]
    chunks = []
    chunk_sentences = []
    for p in stored["passages"]:
        text = documents[p["doc_id"]].text
        first, last = p["sentences"]
        spans = tuple((s, e) for _, s, e in sentences[first:last])
        chunks.append(Chunk(p["doc_id"], p["position"], p["start"], p["end"], text[p["start"]:p["end"]], spans))
        chunk_sentences.append((first, last))
    if len(chunks) != len(vectors) or faiss_index.ntotal != len(chunks) or len(sentences) != len(sentence_vectors):
        raise IndexCorrupt(f"index in {folder} has mismatched parts; {rebuild}")
    terms = None
    if has_terms:
        try:
            terms = _read_terms(folder, len(chunks), len(documents), len(sentences))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IndexCorrupt(f"index terms in {folder} cannot be read ({exc}); {rebuild}") from None
    return IndexData(documents, chunks, vectors, sentences, sentence_vectors, chunk_sentences,
                     manifest, manifest["version"], faiss_index, terms, _read_bm25(folder) if has_bm25 else None)


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


def _read_terms(folder: Path, passages: int, articles: int, sentences: int) -> IndexTerms:
    vocabulary = json.loads((folder / "terms.json").read_text(encoding="utf-8"))["vocabulary"]
    if not isinstance(vocabulary, list):
        raise ValueError("the vocabulary is not a list")
    ids = np.load(folder / "term_ids.npy", allow_pickle=False)
    offsets = np.load(folder / "term_offsets.npy", allow_pickle=False)
    return unpack(vocabulary, ids, offsets, passages, articles, sentences)


def _read_bm25(folder: Path) -> Bm25Indexes | None:
    """The stored bm25s indexes, or None if this bm25s cannot read them (they are then built from the terms)."""
    bm25s = import_bm25s()
    try:
        passages, articles = (bm25s.BM25.load(folder, show_progress=False, **_bm25_names(kind)) for kind in _BM25_KINDS)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Bm25Indexes(passages, articles)


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("qa")
    except Exception:  # not installed, e.g. run from a source tree
        return "dev"
