"""The reader: a cross-encoder that reads a question against candidate sentences.

For each (question, sentence) pair it gives a logit (does this sentence answer the question?) and
the most likely answer span inside the sentence. The model is our own fine-tune of the packaged
MiniLM (see qa/models/reader/README.md), exported to ONNX int8 and run by onnxruntime, without torch.
`answer.py` decides what to do with the scores.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import ConfigError

SHIPPED = Path(__file__).resolve().parent / "models" / "reader"
MAX_ANSWER_TOKENS = 30  # an answer span longer than this is a sentence, not an answer


@dataclass(frozen=True)
class Reading:
    """What the reader made of one sentence: its logit and its best answer span (sentence offsets)."""

    logit: float
    start: int
    end: int


def resolve_folder(setting: str) -> Path | None:
    """The model folder a QA_READER value names: '' or 'default' the shipped one, 'off' none."""
    value = (setting or "default").strip()
    if value.lower() == "off":
        return None
    folder = SHIPPED if value.lower() == "default" else Path(value).expanduser()
    if not (folder / "model.onnx").is_file() or not (folder / "tokenizer.json").is_file():
        raise ConfigError(f"no reader model in {folder}: it needs model.onnx and tokenizer.json "
                          "(set QA_READER=off to answer without the reader)")
    return folder


class Reader:
    """One reader model in onnxruntime with its tokenizer; thread-safe, loaded on first use.

    Two sessions of the model: a question read alone runs on every core given (`threads`), and one read
    while another is being read runs on one thread. A lone question is fastest spread over the cores, but
    spread questions read side by side wait on each other's threads: on 2 cores, with 8 clients, every
    read on both cores answered 51 requests/s, and this 69-71 (bench/RESULTS.md). The two sessions give
    the same scores (tests/test_reader.py).
    """

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        self.folder = folder
        self.threads = threads
        self._lock = threading.Lock()
        self._sessions: tuple[Any, Any] | None = None  # (every core, one thread)
        self._tokenizer: Any = None
        self._reading = 0  # questions being read now
        self._count = threading.Lock()
        config_path = folder / "reader.json"
        self.config: dict[str, Any] = json.loads(config_path.read_text()) if config_path.exists() else {}
        self.max_length = int(self.config.get("max_length", 96))

    def _session(self, threads: int) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        return ort.InferenceSession(str(self.folder / "model.onnx"), options, providers=["CPUExecutionProvider"])

    def _load(self) -> tuple[tuple[Any, Any], Any]:
        with self._lock:
            if self._sessions is None:
                from tokenizers import Tokenizer

                tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
                tokenizer.enable_truncation(self.max_length, strategy="only_second")
                tokenizer.enable_padding()
                self._tokenizer = tokenizer
                threads = self.threads or len(os.sched_getaffinity(0))
                wide = self._session(threads)
                self._sessions = (wide, self._session(1) if threads > 1 else wide)
        return self._sessions, self._tokenizer

    def raw(self, question: str, sentences: Sequence[str], *,
            alone: bool | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Any]]:
        """Logits, start and end scores of each pair, and the tokenizer's encodings.

        `alone` picks the session (every core, or one thread); by default, whether no other question is
        being read.
        """
        (wide, narrow), tokenizer = self._load()
        encodings = tokenizer.encode_batch([(question, s) for s in sentences])
        ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64),
                 "token_type_ids": np.asarray([e.type_ids for e in encodings], dtype=np.int64)}
        with self._count:
            self._reading += 1
            first = self._reading == 1
        try:
            session = wide if (first if alone is None else alone) else narrow
            logits, starts, ends = session.run(None, feeds)
        finally:
            with self._count:
                self._reading -= 1
        return logits, starts, ends, encodings

    def read(self, question: str, sentences: Sequence[str]) -> list[Reading]:
        """A Reading per sentence, in the order given."""
        if not sentences:
            return []
        logits, starts, ends, encodings = self.raw(question, sentences)
        return [Reading(float(logits[n]), *best_span(starts[n], ends[n], encodings[n]))
                for n in range(len(sentences))]


def best_span(starts: np.ndarray, ends: np.ndarray, encoding: Any) -> tuple[int, int]:
    """Character offsets, inside the sentence, of the best start/end pair over the sentence's tokens."""
    tokens = [i for i, s in enumerate(encoding.sequence_ids) if s == 1]
    if not tokens:
        return 0, 0
    first, last = tokens[0], tokens[-1]
    start_scores = starts[first:last + 1]
    end_scores = ends[first:last + 1]
    count = last - first + 1
    # score[i, j] = start i + end j, kept where i <= j < i + MAX_ANSWER_TOKENS
    grid = start_scores[:, None] + end_scores[None, :]
    rows, cols = np.indices((count, count))
    grid = np.where((cols >= rows) & (cols - rows < MAX_ANSWER_TOKENS), grid, -np.inf)
    i, j = divmod(int(np.argmax(grid)), count)
    offsets = encoding.offsets
    return int(offsets[first + i][0]), int(offsets[first + j][1])
