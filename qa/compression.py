"""Compressed vectors for large indexes: an IVF index of 8-bit codes (memory-mapped) and float16 vector files.

Above COMPRESS_ABOVE passages a version stores
- dense.faiss as IVF-SQ8 (FAISS IndexIVFScalarQuantizer: 384 bytes a passage instead of HNSW's 1,536
  plus its graph), opened memory-mapped, read-only;
- vectors.npy and sentence_vectors.npy as float16 instead of float32, read row by row as questions need
  them (store.RowFile).
The files live once in the page cache, however many `qa serve --workers` processes open them.

Ranking does not change in kind: the IVF only proposes the candidates, and every candidate's cosine is
then computed from vectors.npy (see Retriever.dense_scores and ranked), so the codes' coarse scores
never order anything. float16 keeps a cosine of unit vectors to about 1e-3. IVF rather than HNSW-SQ8:
on the same vectors it builds about four times faster (k-means on a sample, then one assignment per
passage, no graph), answers in less time at the same recall, and FAISS can memory-map it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

KIND = "ivf-sq8"  # as the manifest's "faiss" field names it
# Below this many passages float32 vectors and an HNSW graph fit in memory easily (1.5 GB at 200,000
# passages with their sentences), and exact vectors answer every cosine; above it they are compressed.
COMPRESS_ABOVE = 200_000
# Inverted lists searched per question: recall@50 against exact search is measured by `qa bench --scale`.
NPROBE = 64
SEED = 1234


def applies(passages: int) -> bool:
    """Whether an index of this many passages is stored compressed."""
    return passages > COMPRESS_ABOVE


def vector_dtype(passages: int) -> type:
    """How vectors.npy and sentence_vectors.npy are stored for an index of this many passages."""
    return np.float16 if applies(passages) else np.float32


def lists_for(passages: int) -> int:
    """Inverted lists: about 4 x sqrt(passages), a power of two (4,096 at a million)."""
    return int(2 ** round(math.log2(max(256.0, 4 * math.sqrt(max(passages, 1))))))


def make_index(vectors: np.ndarray, nprobe: int = NPROBE) -> Any:
    """An IVF-SQ8 inner-product index of these unit vectors; labels are rows."""
    import faiss

    count, dimension = vectors.shape
    lists = max(1, min(lists_for(count), count // 39))  # k-means wants at least 39 points a list
    quantizer = faiss.IndexFlatIP(dimension)
    index = faiss.IndexIVFScalarQuantizer(quantizer, dimension, lists, faiss.ScalarQuantizer.QT_8bit,
                                          faiss.METRIC_INNER_PRODUCT)
    index.own_fields = True
    quantizer.this.disown()  # the index frees it
    index.cp.seed = SEED
    # k-means on a fixed sample: 64 points a list is plenty (FAISS asks for at least 39).
    sample = np.sort(np.random.default_rng(SEED).choice(count, size=min(count, 64 * lists), replace=False))
    index.train(_as_stored(vectors[sample]))
    _add(index, vectors)
    index.nprobe = nprobe
    return index


def _add(index: Any, vectors: np.ndarray, block: int = 65_536) -> None:
    """Add rows a block at a time, as stored (float16), so the codes depend only on the files of a version."""
    for at in range(0, len(vectors), block):
        index.add(_as_stored(vectors[at:at + block]))


def _as_stored(vectors: np.ndarray) -> np.ndarray:
    return np.asarray(vectors, dtype=np.float16).astype(np.float32)


def grow(base: Any, base_rows: np.ndarray | None, kept_rows: np.ndarray, vectors: np.ndarray) -> tuple[Any, np.ndarray]:
    """`base` with the passages it lacks added, as an in-memory copy; returns it and the passage row of each label.

    `kept_rows[i]` is where base's passage row i is in `vectors`; `base_rows` maps base's labels to its rows
    (None: labels are rows). The lists keep base's trained centroids and code ranges.
    """
    import faiss

    index = _in_memory_copy(base)
    labelled = kept_rows if base_rows is None else kept_rows[base_rows]
    added = np.setdiff1d(np.arange(len(vectors), dtype=np.int64), kept_rows)
    if len(added):
        _add(index, vectors[added])
    index.nprobe = faiss.extract_index_ivf(base).nprobe
    return index, np.concatenate([labelled, added])


def _in_memory_copy(base: Any) -> Any:
    """A writable copy of an IVF index whose lists may be memory-mapped (FAISS cannot clone those)."""
    import faiss

    ivf = faiss.downcast_index(base)
    quantizer = faiss.clone_index(ivf.quantizer)
    index = faiss.IndexIVFScalarQuantizer(quantizer, ivf.d, ivf.nlist, faiss.ScalarQuantizer.QT_8bit,
                                          faiss.METRIC_INNER_PRODUCT)
    index.own_fields = True
    quantizer.this.disown()
    index.sq = ivf.sq  # the trained code ranges
    index.is_trained = True
    lists = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    source = ivf.invlists
    for number in range(ivf.nlist):
        size = source.list_size(number)
        if size:
            lists.add_entries(number, size, source.get_ids(number), source.get_codes(number))
    index.replace_invlists(lists, True)
    lists.this.disown()
    index.ntotal = ivf.ntotal
    return index


def read(path: str, nprobe: int = NPROBE) -> Any:
    """Open a stored IVF-SQ8 index memory-mapped and read-only."""
    import faiss

    index = faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    ivf = faiss.extract_index_ivf(index)
    ivf.nprobe = nprobe
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    if hasattr(lists, "prefetch_nthread"):
        # The mapped lists start 32 prefetch threads on every search: 1.5 ms a question at 20,000
        # passages against 0.13 ms without them (measured one question at a time on one thread).
        lists.prefetch_nthread = 0
    return index


def is_compressed(index: Any) -> bool:
    return hasattr(index, "nprobe") and hasattr(index, "sq")
