"""One frozen settings object, resolved once from flags > environment (QA_*) > defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError

PACKAGED_MODEL = "packaged:all-MiniLM-L6-v2"


@dataclass(frozen=True)
class Settings:
    """Everything that can be configured; build one with `resolve()`."""

    docs_dir: Path = Path("seeds")
    index_dir: Path = Path("index")
    model: str = PACKAGED_MODEL
    # How the model runs: "onnx" (int8, exported once into cache_dir), "onnx-fp32" or "torch".
    backend: str = "onnx"
    cache_dir: Path | None = None  # default: $XDG_CACHE_HOME/qa or ~/.cache/qa
    top_k: int = 5
    # Chunking: sentences are packed up to chunk_chars; a paragraph break ends a chunk once it
    # holds at least chunk_min_chars; a chunk cut inside a paragraph repeats overlap sentences.
    chunk_chars: int = 700
    chunk_min_chars: int = 250
    overlap: int = 1
    hybrid: bool = True
    # Hybrid fusion: the dense share of the weight (lexical gets 1 - dense_weight), and the
    # reciprocal rank fusion constant for the fusion="rrf" variant (the default is z-score fusion).
    rrf_k: int = 60
    dense_weight: float = 0.5
    # A follow-up's context (the conversation's earlier question) joins retrieval at this share of the
    # question's own weight (see qa/conversation.py); tuned on the training follow-ups.
    context_weight: float = 0.3
    max_per_doc: int = 3
    # Answers whose confidence (best sentence score + 2 x the top passage's cosine, see qa/answer.py)
    # is below this are not offered; the page says nothing answers. Calibrated on training questions.
    answer_threshold: float = 1.46
    # The reader (qa/reader.py): "default" is the model that ships in qa/models/reader, "off" answers
    # without it (the sentence scores above decide), anything else is the path of a reader folder.
    reader: str = "default"
    # With the reader on, answers whose reader score is below this are not offered. Fitted on held-out
    # SQuAD train articles (see qa/models/reader/README.md).
    reader_threshold: float = 1.74
    batch_size: int | None = None  # texts per forward pass when indexing; None: the backend's own default
    max_question_chars: int = 1000
    max_upload_bytes: int = 1_000_000
    cache_size: int = 256
    api_token: str | None = None
    # Whether the token guards reads too (questions, article text), not only adding and deleting.
    api_token_reads: bool = False
    # Host names, besides localhost and this machine's addresses, that requests may name, comma-separated;
    # "*" allows any (see qa/security.py: a foreign Host is how DNS rebinding reaches a local server).
    allowed_hosts: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    # `qa serve` processes sharing one listening socket and one index folder (see qa/workers.py).
    workers: int = 1
    # `qa index` on a Ray cluster (see qa/ray_build.py): its address, "auto" for the one running here.
    ray_address: str | None = None


# Environment variable for each field: QA_ + upper-case field name.
_ENV_PREFIX = "QA_"


def _convert(name: str, raw: Any, kind: Any) -> Any:
    """Turn a flag or environment string into the field's type, or raise ConfigError."""
    if raw is None:
        return None
    kind_name = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    try:
        if "Path" in kind_name:
            if raw == "":
                return None
            return Path(raw)
        if kind_name.startswith("bool"):
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if kind_name.startswith("int"):
            return int(raw)
        if kind_name.startswith("float"):
            return float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a {kind_name.split()[0]}, got {raw!r}") from None
    return str(raw)


def resolve(flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from flags (None means not given) over QA_* variables over defaults."""
    flags = flags or {}
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for field in fields(Settings):
        if flags.get(field.name) is not None:
            values[field.name] = _convert(f"--{field.name.replace('_', '-')}", flags[field.name], field.type)
        elif env.get(_ENV_PREFIX + field.name.upper()):
            key = _ENV_PREFIX + field.name.upper()
            values[field.name] = _convert(key, env[key], field.type)
    settings = replace(Settings(), **values)
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    """Reject values that would make the assistant misbehave later."""
    if not 1 <= settings.top_k <= 50:
        raise ConfigError(f"top_k must be between 1 and 50, got {settings.top_k}")
    if settings.chunk_chars < 100:
        raise ConfigError(f"chunk_chars must be at least 100, got {settings.chunk_chars}")
    if not 0 <= settings.chunk_min_chars <= settings.chunk_chars:
        raise ConfigError("chunk_min_chars must be between 0 and chunk_chars")
    if settings.overlap < 0:
        raise ConfigError("overlap must not be negative")
    if not 0.0 <= settings.dense_weight <= 1.0:
        raise ConfigError("dense_weight must be between 0 and 1")
    if settings.backend not in ("onnx", "onnx-fp32", "torch"):
        raise ConfigError(f"backend must be onnx, onnx-fp32 or torch, got {settings.backend!r}")
    if settings.max_per_doc < 1:
        raise ConfigError("max_per_doc must be at least 1")
    if settings.api_token_reads and not settings.api_token:
        raise ConfigError("api_token_reads needs api_token: set QA_API_TOKEN too")
    if not 1 <= settings.workers <= 64:
        raise ConfigError(f"workers must be between 1 and 64, got {settings.workers}")
    if not 1 <= settings.port <= 65535:
        raise ConfigError(f"port must be between 1 and 65535, got {settings.port}")
