"""Articles folder -> index version: re-embed and re-tokenise only new or changed articles, reuse the rest."""

from __future__ import annotations

import contextlib
import threading
import time
from bisect import bisect_left
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import changes, documents, lexical, store, tables
from .chunking import Chunk, chunk_text, sentence_units
from .config import Settings
from .documents import Document
from .embedding import EXPORT_VERSION, Embedder
from .errors import BuildCancelled, DocumentError, IndexCorrupt, IndexIncompatible, IndexMissing
from .lexical import IndexTerms, Lexicon
from .store import IndexData

Log = Callable[[str], None]
# Passages are embedded this many at a time: the tokenizer's encodings of a slice (tens of KB per
# passage) are freed before the next, so a build's memory does not grow with the size of an upload,
# and a cancelled build stops within a slice (about 2 s of the packaged model on 2 cores).
EMBED_SLICE = 128
# A build embedding more articles than this keeps their vectors in a store.Spill until it writes the version
# (an upload of a few articles keeps them in memory, where they are small).
SPILL_ABOVE = 64
# Articles are split and embedded in groups of about this many characters: a build holds the texts of
# one group's passages and sentences at a time, not of every article it adds.
GROUP_CHARS = 1_000_000


def release_memory() -> None:
    """Hand the heap memory a build step freed back to the system: glibc keeps it otherwise, and a large
    upload's transient texts and arrays would stay in the server's resident size for good."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def check_cancel(cancel: threading.Event | None) -> None:
    """Raise BuildCancelled if the build was asked to stop (the server is shutting down)."""
    if cancel is not None and cancel.is_set():
        raise BuildCancelled("the index update was cancelled; the previous version is still the live one")


@dataclass(frozen=True)
class BuildReport:
    """What a build did, for the CLI and the API to show."""

    version: str | None  # None when nothing changed and no version was written
    documents: int
    passages: int
    embedded_documents: list[str]
    removed_documents: list[str]
    skipped: dict[str, str] = field(default_factory=dict)  # file name -> why it was not indexed
    seconds: float = 0.0
    full: bool = False
    # The version just written, in memory as store.load would give it (None when none was written).
    data: IndexData | None = field(default=None, repr=False, compare=False)


@dataclass
class _Part:
    """A run of articles that are consecutive in id order, and their share of an index version.

    A run carried over from the live version is sliced out of its arrays whole, so an update costs
    a few slices per added, changed or removed article, not a few per article in the index.
    """

    docs: Sequence[Document]  # a list, or a run of a loaded version's articles (tables.DocumentRun)
    chunks: Sequence[Chunk]
    vectors: np.ndarray
    sentences: Sequence[tuple[str, int, int]]  # (doc_id, start, end), as in IndexData
    sentence_vectors: np.ndarray
    chunk_sentences: Sequence[Sequence[int]]  # relative to this part's sentences
    terms: IndexTerms | None  # None until tokenised (an index stored without terms)


def chunking_settings(settings: Settings) -> dict[str, int]:
    return {"chunk_chars": settings.chunk_chars, "chunk_min_chars": settings.chunk_min_chars, "overlap": settings.overlap}


def model_tag(settings: Settings) -> str:
    """The model as the manifest records it: vectors from different backends are not mixed.

    The ONNX backends pool sentence vectors from their passages' forward pass (embed_documents),
    which the tag says too, so an index with sentence vectors embedded alone is rebuilt. So does the
    export recipe's version: another recipe gives slightly different vectors.
    """
    if settings.model.startswith("fake-") or settings.backend == "torch":
        return settings.model
    return f"{settings.model} ({settings.backend}, export {EXPORT_VERSION}, sentences in context)"


def split_document(doc: Document, settings: Settings) -> tuple[list[Chunk], list[tuple[int, int]], list[tuple[int, int]]]:
    """An article's passages, its sentence spans, and each passage's [first, last) sentence rows."""
    units = sentence_units(doc.text, settings.chunk_chars)
    row_of = {(s, e): row for row, (s, e, _) in enumerate(units)}
    chunks = chunk_text(doc.doc_id, doc.text, settings.chunk_chars, settings.chunk_min_chars, settings.overlap)
    ranges = [(row_of[c.sentences[0]], row_of[c.sentences[-1]] + 1) for c in chunks]
    return chunks, [(s, e) for s, e, _ in units], ranges


def _article_rows(data: IndexData) -> tuple[list[int], list[int]]:
    """Where each article's passage and sentence rows start, and where the last ends (article i: [at[i], at[i + 1]))."""
    ids = list(data.documents)
    return (_bounds(ids, tables.owners(data.chunks), "passages"),
            _bounds(ids, tables.owners(data.sentences), "sentences"))


def _bounds(ids: list[str], owners: list[str], what: str) -> list[int]:
    counts = Counter(owners)
    # assemble groups rows by article in id order; anything else is not an index this code wrote.
    if owners != [doc_id for doc_id in ids for _ in range(counts.get(doc_id, 0))]:
        raise IndexCorrupt(f"the index's {what} are not grouped by article in id order")
    return [0, *accumulate(counts.get(doc_id, 0) for doc_id in ids)]


def _parts_of(data: IndexData, rows: tuple[list[int], list[int]], kept: set[str], added: set[str]) -> list[_Part]:
    """The `kept` articles of a loaded index as runs, cut wherever an article leaves or an `added` one comes between.

    `rows` is _article_rows(data).
    """
    ids = list(data.documents)
    added_ids = sorted(added)
    parts: list[_Part] = []
    first: int | None = None  # the first article of the run being grown
    for number, doc_id in enumerate([*ids, None]):  # None: past the last article, ends the last run
        joins = (first is not None and doc_id in kept
                 and bisect_left(added_ids, doc_id) == bisect_left(added_ids, ids[number - 1]))
        if first is not None and not joins:
            parts.append(_run(data, ids, first, number, *rows))
            first = None
        if first is None and doc_id in kept:
            first = number
    return parts


def _run(data: IndexData, ids: list[str], first: int, last: int, chunk_at: list[int],
         sentence_at: list[int]) -> _Part:
    """Articles [first, last) of a loaded index as one part: slices of its lists and arrays."""
    c0, c1, s0, s1 = chunk_at[first], chunk_at[last], sentence_at[first], sentence_at[last]
    terms = None
    if data.terms is not None:
        terms = data.terms.share((first, last), (c0, c1), (s0, s1))
    documents = data.documents
    return _Part(
        docs=(tables.DocumentRun(documents, first, last) if isinstance(documents, tables.DocumentTable)
              else [documents[doc_id] for doc_id in ids[first:last]]),
        chunks=data.chunks[c0:c1],
        vectors=_rows(data.vectors, c0, c1),
        sentences=data.sentences[s0:s1],
        sentence_vectors=_rows(data.sentence_vectors, s0, s1),
        chunk_sentences=_shifted(data.chunk_sentences[c0:c1], -s0),
        terms=terms,
    )


def _rows(array: Any, first: int, last: int) -> Any:
    """Rows [first, last) of a version's array; of a large version's (a store.RowFile), read only when used."""
    window = getattr(array, "window", None)
    return window(first, last) if window is not None else array[first:last]


def _in_order(parts: list[_Part]) -> list[_Part]:
    """The parts that hold articles, in id order; ValueError if they overlap or one lacks its terms."""
    parts = sorted((p for p in parts if p.docs), key=lambda p: tables.ids_of(p.docs)[0])
    if any(p.terms is None for p in parts):
        raise ValueError("every article needs its terms before assembling (see tokenise_missing)")
    ids = [doc_id for p in parts for doc_id in tables.ids_of(p.docs)]
    if any(a >= b for a, b in zip(ids, ids[1:])):
        raise ValueError("the parts overlap: each article must be in one part, and a part's articles consecutive")
    return parts


def merged_terms(parts: list[_Part]) -> IndexTerms:
    """The parts' terms over one vocabulary, rows in id order: the terms assemble gives."""
    return lexical.merge([p.terms for p in _in_order(parts) if p.terms is not None])


def assemble(parts: list[_Part], dimension: int, terms: IndexTerms | None = None, *,
             release: bool = False, staging: store.Staging | None = None) -> IndexData:
    """Concatenate parts, in id order, into one index's arrays and terms (`terms`: merged_terms(parts), if made).

    The bm25s indexes are left to the caller: build makes them while this copies arrays and store.write writes.
    `release`: empty each part's arrays once copied (the caller is done with them), so that the new
    articles' vectors are not held twice while the index's arrays fill. `staging`: stream the vector arrays
    into the next version's files instead (in the dtype the version stores), and hold them memory-mapped.
    The articles, passages and sentences come out as tables (tables.concat).
    """
    parts = _in_order(parts)
    # Tables, not objects: a part carried from the live version is copied as rows and record bytes.
    documents, chunks, sentences = tables.concat([(p.docs, p.chunks, p.sentences, p.chunk_sentences) for p in parts])
    chunk_sentences = chunks.sentence_ranges
    terms = merged_terms(parts) if terms is None else terms
    empty = np.zeros((0, dimension), dtype=np.float32)

    def blocks(name: str) -> Any:
        """Each part's array of that name in turn, emptied once used when `release` says so."""
        for part in parts:
            yield getattr(part, name)
            if release:
                setattr(part, name, empty)

    if staging is not None:
        from . import compression

        dtype = compression.vector_dtype(len(chunks))
        vectors = staging.rows("vectors.npy", (len(chunks), dimension), dtype, blocks("vectors"))
        sentence_vectors = staging.rows("sentence_vectors.npy", (len(sentences), dimension), dtype,
                                        blocks("sentence_vectors"))
    else:
        # np.empty's pages are only committed as they are written: filled part by part, while the parts
        # already copied are released, memory grows by about one part at a time.
        vectors = np.empty((len(chunks), dimension), dtype=np.float32)
        sentence_vectors = np.empty((len(sentences), dimension), dtype=np.float32)
        for array, name in ((vectors, "vectors"), (sentence_vectors, "sentence_vectors")):
            at = 0
            for block in blocks(name):
                array[at:at + len(block)] = block
                at += len(block)
    return IndexData(documents=documents, chunks=chunks, vectors=vectors, sentences=sentences,
                     sentence_vectors=sentence_vectors, chunk_sentences=chunk_sentences, terms=terms, staged=staging)


def _shifted(pairs: Sequence[Sequence[int]], by: int) -> np.ndarray:
    """Row ranges moved by `by` rows, as an array of [first, last) pairs."""
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2) + by


def tokenise_missing(parts: list[_Part], lexicon: Lexicon) -> int:
    """Give the parts that have no terms (from an index stored without them) their terms; returns how many articles."""
    missing = [part for part in parts if part.terms is None]
    for part in missing:
        text = {doc.doc_id: doc.text for doc in part.docs}
        part.terms = lexical.tokenise(lexicon, part.docs, part.chunks,
                                      [text[doc_id][start:end] for doc_id, start, end in part.sentences])
    return sum(len(part.docs) for part in missing)


def embed_documents(docs: list[Document], settings: Settings, embedder: Embedder, progress: bool,
                    lexicon: Lexicon, cancel: threading.Event | None = None,
                    spill: store.Spill | None = None) -> list[_Part]:
    """Chunk, embed and tokenise new or changed articles, a group of about GROUP_CHARS characters at a time.

    With an embedder that can (the ONNX backends), each sentence's vector is pooled from its
    passage's own forward pass, in context, so the model reads every passage once; otherwise
    passages and sentences are embedded as separate texts in one batched pass. `spill`: each group's
    vectors go there once made, and the parts hold them as spilled rows, not in memory.
    """
    parts: list[_Part] = []
    group: list[Document] = []
    size = 0
    for doc in docs:
        group.append(doc)
        size += len(doc.text)
        if size >= GROUP_CHARS:
            parts += spilled(_embed_group(group, settings, embedder, progress, lexicon, cancel), spill)
            group, size = [], 0
            release_memory()
    return parts + spilled(_embed_group(group, settings, embedder, progress, lexicon, cancel), spill)


def spilled(parts: list[_Part], spill: store.Spill | None) -> list[_Part]:
    """The parts with their vectors moved into `spill` (as they are, without one)."""
    if spill is None:
        return parts
    for part in parts:
        part.vectors = spill.put(part.vectors)  # type: ignore[assignment]
        part.sentence_vectors = spill.put(part.sentence_vectors)  # type: ignore[assignment]
    return parts


def _embed_group(docs: list[Document], settings: Settings, embedder: Embedder, progress: bool,
                 lexicon: Lexicon, cancel: threading.Event | None) -> list[_Part]:
    """embed_documents for one group: its parts' arrays are slices of the group's own."""
    split = [split_document(doc, settings) for doc in docs]
    chunks = [c for doc_chunks, _, _ in split for c in doc_chunks]
    sentence_texts = [doc.text[s:e] for doc, (_, spans, _) in zip(docs, split) for s, e in spans]
    if hasattr(embedder, "embed_spans") and chunks:
        passage_vectors, sentence_vectors = _in_context(docs, split, chunks, sentence_texts, embedder, progress, cancel)
    else:
        texts = [c.text for c in chunks] + sentence_texts
        vectors = np.zeros((len(texts), embedder.dimension), np.float32)
        for at in range(0, len(texts), EMBED_SLICE):
            check_cancel(cancel)
            vectors[at:at + EMBED_SLICE] = embedder.embed(texts[at:at + EMBED_SLICE], progress=progress)
        passage_vectors, sentence_vectors = vectors[:len(chunks)], vectors[len(chunks):]
    parts, p_at, s_at = [], 0, 0
    for doc, (doc_chunks, spans, ranges) in zip(docs, split):
        parts.append(_Part([doc], doc_chunks, passage_vectors[p_at:p_at + len(doc_chunks)],
                           [(doc.doc_id, start, end) for start, end in spans], sentence_vectors[s_at:s_at + len(spans)],
                           ranges, lexical.tokenise_article(lexicon, doc, doc_chunks, spans)))
        p_at += len(doc_chunks)
        s_at += len(spans)
    return parts


def _in_context(docs: list[Document], split: list[tuple[list[Chunk], list[tuple[int, int]], list[tuple[int, int]]]],
                chunks: list[Chunk], sentence_texts: list[str], embedder: Any,
                progress: bool, cancel: threading.Event | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Passage vectors, and sentence vectors pooled from the first passage that holds each sentence."""
    relative = [[(s - c.start, e - c.start) for s, e in c.sentences] for c in chunks]
    passage_vectors = np.zeros((len(chunks), embedder.dimension), dtype=np.float32)
    pooled: list[np.ndarray] = []
    for at in range(0, len(chunks), EMBED_SLICE):
        check_cancel(cancel)
        vectors, spans = embedder.embed_spans([c.text for c in chunks[at:at + EMBED_SLICE]],
                                              relative[at:at + EMBED_SLICE], progress=progress)
        passage_vectors[at:at + len(vectors)] = vectors
        pooled.extend(spans)
    sentence_vectors = np.zeros((len(sentence_texts), embedder.dimension), dtype=np.float32)
    filled = np.zeros(len(sentence_texts), dtype=bool)
    at, base = 0, 0
    for doc, (doc_chunks, spans, _) in zip(docs, split):
        row_of = {span: base + row for row, span in enumerate(spans)}
        for chunk in doc_chunks:
            for span, vector in zip(chunk.sentences, pooled[at]):
                row = row_of[span]
                if not filled[row]:
                    sentence_vectors[row] = vector
                    filled[row] = True
            at += 1
        base += len(spans)
    missing = np.flatnonzero(~filled)
    if len(missing):  # a sentence in no passage (none are today): embedded on its own
        sentence_vectors[missing] = embedder.embed([sentence_texts[i] for i in missing.tolist()])
    return passage_vectors, sentence_vectors


def build(settings: Settings, embedder: Embedder, *, full: bool = False, progress: bool = False,
          log: Log = lambda message: None, current: IndexData | None = None, locked: bool = False,
          lock_wait: float = 0.0, cancel: threading.Event | None = None,
          parsed: Mapping[str, Document] | None = None,
          embed: Callable[..., list[_Part]] | None = None) -> BuildReport:
    """Bring the index in line with the articles folder; only changed articles are embedded.

    `embed` turns the new or changed articles into parts, called as embed_documents is (the default);
    qa/ray_build.py passes one that hands back the parts a Ray cluster made with embed_documents.

    `parsed` holds articles the caller has parsed already (an upload, checked before it was written),
    by id: one is used when its content hash is still the file's, so it is not parsed again.

    `current` is the live version already in memory, if the caller has it: used instead of reading
    it again when it is still the live one on disk. `locked`: the caller holds the build lock (and has
    recovered any interrupted change, see changes.py); otherwise it is taken here, waiting up to
    `lock_wait` seconds. `cancel`, when set, stops the build before its commit (BuildCancelled).
    """
    started = time.perf_counter()
    index_dir = settings.index_dir
    with contextlib.nullcontext() if locked else store.build_lock(index_dir, lock_wait, cancel):
        if not locked and changes.recover(settings.docs_dir):
            log("finished an add or remove that was interrupted")
        store.clean_staging(index_dir)
        files = documents.article_files(settings.docs_dir)
        expected = store.compatibility(model_tag(settings), None, chunking_settings(settings))
        previous: Mapping[str, Document] = {}  # the articles of `base`
        base: IndexData | None = None  # the version this build starts from, if any
        rows: tuple[list[int], list[int]] = ([0], [0])  # where base's articles have their rows (_article_rows)
        if not full:
            try:
                if current is not None and current.version and current.version == store.current_version(index_dir):
                    loaded = current
                else:
                    loaded = store.load(index_dir)
                store.check_compatible(loaded.manifest, expected)
                rows = _article_rows(loaded)
                previous, base = loaded.documents, loaded
            except IndexMissing:
                full = True
            except (IndexIncompatible, IndexCorrupt) as exc:
                log(f"rebuilding from scratch: {exc}")
                full = True
        kept_ids: set[str] = set()
        changed: list[Document] = []
        skipped: dict[str, str] = {}
        for path in files:
            known = tables.content_hash(previous, path.stem)
            if known is not None and known == documents.file_hash(path):
                kept_ids.add(path.stem)
                continue
            ready = parsed.get(path.stem) if parsed else None
            if ready is not None and ready.content_hash == documents.file_hash(path):
                changed.append(ready)
                continue
            try:
                changed.append(documents.load(path))
            except DocumentError as exc:
                skipped[path.name] = str(exc)
                log(f"skipped {path.name}: {exc}")
        added = {d.doc_id for d in changed}
        removed = sorted(set(previous) - kept_ids - added)
        kept = _parts_of(base, rows, kept_ids, added) if base is not None else []
        lexicon = Lexicon()
        # An index stored without terms (or by another lexicon) gets them now, from its texts.
        derived = tokenise_missing(kept, lexicon)
        if derived:
            log(f"derived the index terms of {derived} article(s) from their stored text")
        if previous and not changed and not removed and not derived:
            return BuildReport(None, len(kept_ids), sum(len(p.chunks) for p in kept), [], [], skipped,
                               time.perf_counter() - started, full)
        if changed:
            log(f"embedding {len(changed)} article(s)")
        spill = store.Spill() if embed is None and len(changed) > SPILL_ABOVE else None
        try:
            made = embed(changed, settings, embedder, progress, lexicon, cancel) if embed is not None \
                else embed_documents(changed, settings, embedder, progress, lexicon, cancel, spill)
            parts = kept + made
            check_cancel(cancel)
            terms = merged_terms(parts)
            fields = {"model": model_tag(settings), "chunking": chunking_settings(settings)}
            staging = store.Staging(index_dir)
            try:
                with ThreadPoolExecutor(max_workers=1) as pool:
                    # The bm25s indexes are made while the arrays are streamed out and the version is written
                    # (file I/O, hashing and FAISS, which release the GIL): on two cores the two overlap.
                    bm25 = pool.submit(lexical.bm25_indexes, terms)
                    data = assemble(parts, embedder.dimension, terms, release=True, staging=staging)
                    release_memory()
                    data = store.write(index_dir, data, fields, base, bm25, cancel)
            except BaseException:
                staging.discard()
                raise
        finally:
            if spill is not None:
                spill.close()
        release_memory()
        return BuildReport(data.version, len(data.documents), len(data.chunks), [d.doc_id for d in changed], removed,
                           skipped, time.perf_counter() - started, full, data)
