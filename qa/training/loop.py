"""The training loop: deterministic for a seed, resumable from its last checkpoint, with a progress bar."""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .data import Pair, assemble

IGNORE = -100  # a span target torch's cross-entropy skips: negatives and answers cut off by truncation


@dataclass(frozen=True)
class TrainSettings:
    """Everything that decides the trained weights; written into the checkpoint and the model card."""

    data: str
    out: str
    questions: int = 30000
    seed: int = 0
    max_length: int = 64
    batch_size: int = 16
    learning_rate: float = 5e-5
    warmup: float = 0.05
    weight_decay: float = 0.01
    synthetic: float = 0.5
    held_out_articles: int = 20
    bf16: bool = True
    freeze_embeddings: bool = True
    span_weight: float = 0.5
    checkpoint_every: int = 250
    threads: int = 2
    encoder: str = ""  # empty: the packaged all-MiniLM-L6-v2
    init: str = ""  # a finished run folder whose reader.pt this run starts from (a second stage)
    skip_questions: int = 0  # questions of the seeded order left to an earlier stage
    style: int = 1  # synthetic-question style (see data.Builder)
    dense_negatives: bool = False  # add the dense ranker's best wrong sentence to each question
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Encoded:
    input_ids: list[int]
    token_type_ids: list[int]
    label: int
    start: int
    end: int


def encoder_path(settings: TrainSettings) -> str:
    if settings.encoder:
        return settings.encoder
    from ..embedding import packaged_model_path

    return str(packaged_model_path())


def encode(pairs: Sequence[Pair], tokenizer: Any, max_length: int) -> list[Encoded]:
    """Token ids of each pair, with the answer span as token positions (IGNORE when absent or cut off)."""
    out: list[Encoded] = []
    step = 2048
    for begin in range(0, len(pairs), step):
        chunk = pairs[begin:begin + step]
        batch = tokenizer([p.question for p in chunk], [p.sentence for p in chunk], truncation="only_second",
                          max_length=max_length, return_offsets_mapping=True, return_token_type_ids=True)
        for n, pair in enumerate(chunk):
            ids, types = batch["input_ids"][n], batch["token_type_ids"][n]
            start = end = IGNORE
            if pair.span is not None:
                offsets, sequence = batch["offset_mapping"][n], batch.sequence_ids(n)
                first, last = pair.span
                for i, (s, e) in enumerate(offsets):
                    if sequence[i] != 1:
                        continue
                    if start == IGNORE and s <= first < e or start == IGNORE and s >= first and e <= last:
                        start = i
                    if s < last and e >= last or (start != IGNORE and e <= last and s >= first):
                        end = i
                if start == IGNORE or end == IGNORE or end < start:
                    start = end = IGNORE
            out.append(Encoded(ids, types, pair.label, start, end))
    return out


def batches(count: int, batch_size: int, lengths: Sequence[int], seed: int) -> list[list[int]]:
    """Shuffled batches of similar length (less padding), the same for the same seed."""
    rng = random.Random(seed)
    order = list(range(count))
    rng.shuffle(order)
    window = batch_size * 50
    grouped: list[list[int]] = []
    for begin in range(0, count, window):
        part = sorted(order[begin:begin + window], key=lambda i: lengths[i])
        grouped.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    rng.shuffle(grouped)
    return grouped


def collate(items: Sequence[Encoded]) -> dict[str, Any]:
    import torch

    width = max(len(e.input_ids) for e in items)
    ids = torch.zeros((len(items), width), dtype=torch.long)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for row, e in enumerate(items):
        ids[row, :len(e.input_ids)] = torch.tensor(e.input_ids)
        types[row, :len(e.token_type_ids)] = torch.tensor(e.token_type_ids)
        mask[row, :len(e.input_ids)] = 1
    return {
        "input_ids": ids, "token_type_ids": types, "attention_mask": mask,
        "label": torch.tensor([float(e.label) for e in items]),
        "start": torch.tensor([e.start for e in items]), "end": torch.tensor([e.end for e in items]),
    }


def span_loss(logits: Any, target: Any, allowed: Any) -> Any:
    """Cross-entropy over the sentence's tokens only; rows without a target add nothing."""
    import torch

    logits = logits.float().masked_fill(~allowed, -1e4)
    if bool((target != IGNORE).any()):
        return torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE)
    return logits.sum() * 0.0


def _save(path: Path, state: dict[str, Any]) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(settings: TrainSettings, *, progress: bool = True, log: Callable[[str], None] = print,
          max_steps: int | None = None, stop_after: int | None = None) -> Path:
    """Fit the reader; returns the folder holding `reader.pt`. Picks up from `checkpoint.pt` when present.

    `max_steps` shortens the plan (smoke runs); `stop_after` leaves the loop after that step as if the run had
    been killed there (the tests' way to check that resuming gives the same weights).
    """
    import torch
    from tqdm import tqdm
    from transformers import AutoTokenizer

    from .model import ReaderNet

    torch.manual_seed(settings.seed)
    torch.set_num_threads(settings.threads)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    source = encoder_path(settings)
    tokenizer = AutoTokenizer.from_pretrained(source)
    started = time.time()
    log(f"assembling pairs from {settings.questions:,} questions")
    pairs = list(assemble(Path(settings.data), settings.questions, settings.seed, settings.held_out_articles,
                          settings.synthetic, settings.skip_questions, settings.style, settings.dense_negatives))
    encoded = encode(pairs, tokenizer, settings.max_length)
    kinds: dict[str, int] = {}
    for p in pairs:
        kinds[p.kind] = kinds.get(p.kind, 0) + 1
    log(f"{len(pairs):,} pairs ({json.dumps(kinds)}) in {time.time() - started:.0f} s")
    plan = batches(len(encoded), settings.batch_size, [len(e.input_ids) for e in encoded], settings.seed)
    total = len(plan) if max_steps is None else min(len(plan), max_steps)

    model = ReaderNet.from_encoder(source)
    if settings.init:
        model.load_state_dict(torch.load(Path(settings.init) / "reader.pt", weights_only=True))
        log(f"starting from {Path(settings.init) / 'reader.pt'}")
    if settings.freeze_embeddings:
        for parameter in model.encoder.embeddings.parameters():
            parameter.requires_grad = False
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    warm = max(1, int(total * settings.warmup))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
    step = 0
    elapsed = 0.0  # seconds spent in the loop by earlier, interrupted runs
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        # The thread count may change between runs (a busier machine); everything else must match.
        made_with = {**asdict(TrainSettings(data="", out="")), **state["settings"], "threads": 0}
        if made_with != {**asdict(settings), "threads": 0}:
            raise SystemExit(f"error: {checkpoint} was made with other settings; remove it or use another --out")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        step = state["step"]
        elapsed = state.get("elapsed", 0.0)
        log(f"resuming at step {step:,} of {total:,}")
    model.train()
    loop_started, first_step = time.time(), step
    history = open(out / "train_log.jsonl", "a", encoding="utf-8")
    bar = tqdm(total=total, initial=step, disable=not progress, unit="step", smoothing=0.05, mininterval=5)
    running: list[float] = []
    while step < total:
        batch = collate([encoded[i] for i in plan[step]])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings.bf16):
            logit, start, end = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        allowed = (batch["token_type_ids"] == 1) & (batch["attention_mask"] == 1)
        relevance = torch.nn.functional.binary_cross_entropy_with_logits(logit.float(), batch["label"])
        spans = span_loss(start, batch["start"], allowed) + span_loss(end, batch["end"], allowed)
        loss = relevance + settings.span_weight * spans
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        running.append(float(loss.detach()))
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(running[-50:]):.3f}")
        if step % settings.checkpoint_every == 0 or step == total:
            history.write(json.dumps({"step": step, "loss": float(np.mean(running[-settings.checkpoint_every:])),
                                      "seconds": round(time.time() - started, 1)}) + "\n")
            history.flush()
            _save(checkpoint, {"settings": asdict(settings), "model": model.state_dict(),
                               "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                               "torch_rng": torch.get_rng_state(), "step": step,
                               "elapsed": elapsed + time.time() - loop_started})
        if stop_after is not None and step >= stop_after:
            bar.close()
            history.close()
            return out
    bar.close()
    history.close()
    model.eval()
    torch.save(model.state_dict(), out / "reader.pt")
    tokenizer.save_pretrained(out / "tokenizer")
    earlier = json.loads((Path(settings.init) / "train_settings.json").read_text()) if settings.init else None
    (out / "train_settings.json").write_text(json.dumps({
        **asdict(settings), "steps": total, "pairs": len(pairs), "pair_kinds": kinds,
        "loop_seconds": round(elapsed + time.time() - loop_started), "torch": torch.__version__,
        **({"init_settings": earlier} if earlier else {}),
    }, indent=2) + "\n")
    rate = (step - first_step) * settings.batch_size / max(1e-9, time.time() - loop_started)
    log(f"trained {total:,} steps in {time.time() - started:.0f} s ({rate:.1f} pairs/s in the loop)")
    return out
