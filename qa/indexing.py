"""Articles folder -> index version: re-embed and re-tokenise only new or changed articles, reuse the rest."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import documents, lexical, store
from .chunking import Chunk, chunk_text, sentence_units
from .config import Settings
from .documents import Document
from .embedding import EXPORT_VERSION, Embedder
from .errors import DocumentError, IndexCorrupt, IndexIncompatible, IndexMissing
from .lexical import IndexTerms, Lexicon
from .store import IndexData

Log = Callable[[str], None]


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
    """One article's share of an index version."""

    doc: Document
    chunks: list[Chunk]
    vectors: np.ndarray
    sentences: list[tuple[int, int]]
    sentence_vectors: np.ndarray
    chunk_sentences: list[tuple[int, int]]  # relative to this article's sentences
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


def _parts_of(data: IndexData) -> dict[str, _Part]:
    """Cut a loaded index back into per-article parts, so unchanged ones are reused as they are."""
    parts: dict[str, _Part] = {}
    sentence_rows: dict[str, list[int]] = {}
    for row, (doc_id, _, _) in enumerate(data.sentences):
        sentence_rows.setdefault(doc_id, []).append(row)
    chunk_rows: dict[str, list[int]] = {}
    for row, chunk in enumerate(data.chunks):
        chunk_rows.setdefault(chunk.doc_id, []).append(row)
    for number, (doc_id, doc) in enumerate(data.documents.items()):
        rows = chunk_rows.get(doc_id, [])
        srows = sentence_rows.get(doc_id, [])
        base = srows[0] if srows else 0
        terms = None
        if data.terms is not None:
            # An article's passages and sentences are consecutive rows (see assemble).
            first = rows[0] if rows else 0
            terms = data.terms.article(number, (first, first + len(rows)), (base, base + len(srows)))
        parts[doc_id] = _Part(
            doc=doc,
            chunks=[data.chunks[r] for r in rows],
            vectors=data.vectors[rows],
            sentences=[(data.sentences[r][1], data.sentences[r][2]) for r in srows],
            sentence_vectors=data.sentence_vectors[srows],
            chunk_sentences=[(data.chunk_sentences[r][0] - base, data.chunk_sentences[r][1] - base) for r in rows],
            terms=terms,
        )
    return parts


def assemble(parts: list[_Part], dimension: int) -> IndexData:
    """Concatenate per-article parts, in id order, into one index's arrays, terms and bm25s indexes."""
    parts = sorted(parts, key=lambda p: p.doc.doc_id)
    if any(p.terms is None for p in parts):
        raise ValueError("every article needs its terms before assembling (see tokenise_missing)")
    terms = lexical.merge([p.terms for p in parts if p.terms is not None])
    chunks, sentences, chunk_sentences = [], [], []
    for part in parts:
        base = len(sentences)
        chunks.extend(part.chunks)
        sentences.extend((part.doc.doc_id, s, e) for s, e in part.sentences)
        chunk_sentences.extend((first + base, last + base) for first, last in part.chunk_sentences)
    empty = np.zeros((0, dimension), dtype=np.float32)
    return IndexData(
        documents={p.doc.doc_id: p.doc for p in parts},
        chunks=chunks,
        vectors=np.concatenate([p.vectors for p in parts] or [empty]).astype(np.float32),
        sentences=sentences,
        sentence_vectors=np.concatenate([p.sentence_vectors for p in parts] or [empty]).astype(np.float32),
        chunk_sentences=chunk_sentences,
        terms=terms,
        bm25=lexical.bm25_indexes(terms),
    )


def tokenise_missing(parts: list[_Part], lexicon: Lexicon) -> int:
    """Give the parts that have no terms (from an index stored without them) their terms; returns how many."""
    missing = [part for part in parts if part.terms is None]
    for part in missing:
        part.terms = lexical.tokenise_article(lexicon, part.doc, part.chunks, part.sentences)
    return len(missing)


def embed_documents(docs: list[Document], settings: Settings, embedder: Embedder, progress: bool,
                    lexicon: Lexicon) -> list[_Part]:
    """Chunk, embed and tokenise new or changed articles.

    With an embedder that can (the ONNX backends), each sentence's vector is pooled from its
    passage's own forward pass, in context, so the model reads every passage once; otherwise
    passages and sentences are embedded as separate texts in one batched pass.
    """
    split = [split_document(doc, settings) for doc in docs]
    chunks = [c for doc_chunks, _, _ in split for c in doc_chunks]
    sentence_texts = [doc.text[s:e] for doc, (_, spans, _) in zip(docs, split) for s, e in spans]
    if hasattr(embedder, "embed_spans") and chunks:
        passage_vectors, sentence_vectors = _in_context(docs, split, chunks, sentence_texts, embedder, progress)
    else:
        texts = [c.text for c in chunks] + sentence_texts
        vectors = embedder.embed(texts, progress=progress) if texts else np.zeros((0, embedder.dimension), np.float32)
        passage_vectors, sentence_vectors = vectors[:len(chunks)], vectors[len(chunks):]
    parts, p_at, s_at = [], 0, 0
    for doc, (doc_chunks, spans, ranges) in zip(docs, split):
        parts.append(_Part(doc, doc_chunks, passage_vectors[p_at:p_at + len(doc_chunks)], spans,
                           sentence_vectors[s_at:s_at + len(spans)], ranges,
                           lexical.tokenise_article(lexicon, doc, doc_chunks, spans)))
        p_at += len(doc_chunks)
        s_at += len(spans)
    return parts


def _in_context(docs: list[Document], split: list[tuple[list[Chunk], list[tuple[int, int]], list[tuple[int, int]]]],
                chunks: list[Chunk], sentence_texts: list[str], embedder: Any,
                progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Passage vectors, and sentence vectors pooled from the first passage that holds each sentence."""
    relative = [[(s - c.start, e - c.start) for s, e in c.sentences] for c in chunks]
    passage_vectors, pooled = embedder.embed_spans([c.text for c in chunks], relative, progress=progress)
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
          log: Log = lambda message: None, current: IndexData | None = None) -> BuildReport:
    """Bring the index in line with the articles folder; only changed articles are embedded.

    `current` is the live version already in memory, if the caller has it: used instead of reading
    it again when it is still the live one on disk.
    """
    started = time.perf_counter()
    index_dir = settings.index_dir
    with store.build_lock(index_dir):
        store.clean_staging(index_dir)
        files = documents.article_files(settings.docs_dir)
        expected = store.compatibility(model_tag(settings), None, chunking_settings(settings))
        previous: dict[str, _Part] = {}
        base: IndexData | None = None  # the version this build starts from, if any
        if not full:
            try:
                if current is not None and current.version and current.version == store.current_version(index_dir):
                    loaded = current
                else:
                    loaded = store.load(index_dir)
                store.check_compatible(loaded.manifest, expected)
                previous = _parts_of(loaded)
                base = loaded
            except IndexMissing:
                full = True
            except (IndexIncompatible, IndexCorrupt) as exc:
                log(f"rebuilding from scratch: {exc}")
                full = True
        kept: list[_Part] = []
        changed: list[Document] = []
        skipped: dict[str, str] = {}
        for path in files:
            old = previous.get(path.stem)
            if old is not None and old.doc.content_hash == documents.file_hash(path):
                kept.append(old)
                continue
            try:
                changed.append(documents.load(path))
            except DocumentError as exc:
                skipped[path.name] = str(exc)
                log(f"skipped {path.name}: {exc}")
        current_ids = {p.doc.doc_id for p in kept} | {d.doc_id for d in changed}
        removed = sorted(set(previous) - current_ids)
        lexicon = Lexicon()
        # An index stored without terms (or by another lexicon) gets them now, from its texts.
        derived = tokenise_missing(kept, lexicon)
        if derived:
            log(f"derived the index terms of {derived} article(s) from their stored text")
        if previous and not changed and not removed and not derived:
            return BuildReport(None, len(kept), sum(len(p.chunks) for p in kept), [], [], skipped,
                               time.perf_counter() - started, full)
        if changed:
            log(f"embedding {len(changed)} article(s)")
        new_parts = embed_documents(changed, settings, embedder, progress, lexicon)
        data = assemble(kept + new_parts, embedder.dimension)
        version = store.write(index_dir, data, {"model": model_tag(settings), "chunking": chunking_settings(settings)},
                              base)
        return BuildReport(version, len(data.documents), len(data.chunks), [d.doc_id for d in changed], removed,
                           skipped, time.perf_counter() - started, full, store.written(index_dir, version, data))
