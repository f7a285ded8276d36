"""`qa train-reader`: fine-tune the reader from the packaged MiniLM, export it to ONNX int8, write its card."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Sequence

from .loop import TrainSettings


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qa train-reader", description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("--data", type=Path, default=Path("../shared/train/squad-v1.1-train"),
                        help="SQuAD v1.1 train folder (corpus.jsonl, queries.jsonl)")
    parser.add_argument("--run", type=Path, default=Path("runs/reader"),
                        help="working folder: checkpoints, log, trained weights (resumed when it holds a checkpoint)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where the exported model goes (default: RUN/export); the shipped one is qa/models/reader")
    defaults = TrainSettings(data="", out="")
    for name in ("questions", "seed", "max_length", "batch_size", "learning_rate", "synthetic", "held_out_articles",
                 "skip_questions", "style"):
        value = getattr(defaults, name)
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value, help=f"default {value}")
    parser.add_argument("--init", default="",
                        help="a finished run folder (holding reader.pt) to continue from: a second stage")
    parser.add_argument("--dense-negatives", action="store_true",
                        help="add the dense ranker's best wrong sentence to each question's negatives")
    parser.add_argument("--no-bf16", action="store_true", help="train in float32 (slower; bf16 autocast by default)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke runs)")
    parser.add_argument("--no-export", action="store_true", help="train only")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if not (args.data / "queries.jsonl").is_file() or not (args.data / "corpus.jsonl").is_file():
        print(f"error: {args.data} is not a SQuAD-shaped folder (corpus.jsonl, queries.jsonl); pass --data",
              file=sys.stderr)
        return 1
    from .loop import train

    known = {f.name for f in fields(TrainSettings)}
    settings = TrainSettings(data=str(args.data), out=str(args.run), bf16=not args.no_bf16,
                             **{k: v for k, v in vars(args).items() if k in known and k not in ("data", "out")})
    started = time.time()
    run = train(settings, max_steps=args.max_steps, log=lambda m: print(m, file=sys.stderr))
    if args.no_export:
        return 0
    from .card import write_card
    from .export import export

    target = export(run, args.out or run / "export")
    write_card(run, target, trained_seconds=time.time() - started)
    print(json.dumps({"model": str(target)}))
    return 0
