"""Fit how the answer step uses the reader (PRIOR, the threshold, the shortlist) on held-out SQuAD train articles.

The held-out articles (never trained on) are indexed with every other paragraph left out. Questions
about an indexed paragraph are answerable; questions about a left-out one are not (the article's
other paragraphs are there and look relevant); and each answerable question also yields a synthetic
unanswerable one (a name, number or polarity changed, see data.Builder.unanswerable). Each question
is read once, every candidate's scores are kept, and the settings are chosen offline from them.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from .data import Builder, load, split_articles


def _contains(text: str, answer: str) -> bool:
    from ..evaluation import normalise

    return normalise(answer) in normalise(text)


def collect(data_root: Path, work: Path, reader_folder: Path, questions: int = 1500, seed: int = 0,
            held_out: int = 20, limit: int = 16, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Ask held-out questions with the reader on and keep, per question, every read sentence's scores."""
    from .. import answer as answering
    from ..assistant import Assistant
    from ..config import resolve
    from ..evaluation import sync_docs
    from ..filters import Filters
    from ..retrieval import tidy

    paragraphs, all_questions = load(data_root)
    _, held = split_articles(paragraphs, held_out)
    indexed = {pid for pid, p in paragraphs.items()
               if p.article in held and int(pid.split("_")[1]) % 2 == 0}
    sync_docs(({"id": pid, "title": "", "text": paragraphs[pid].text} for pid in sorted(indexed)), work / "docs")
    settings = replace(resolve(), docs_dir=work / "docs", index_dir=work / "index", cache_size=0,
                       reader=str(reader_folder), max_per_doc=1)
    assistant = Assistant(settings)
    assistant.build(log=log)
    reader = assistant.reader()
    rng = random.Random(seed)
    pool = [q for q in all_questions if paragraphs[q.paragraph].article in held]
    rng.shuffle(pool)
    builder = Builder(paragraphs, seed)
    asked: list[tuple[str, str, str | None, str | None]] = []  # (kind, question, answer, paragraph)
    for q in pool:
        if len(asked) >= questions:
            break
        if q.paragraph in indexed:
            asked.append(("answerable", q.text, q.answer, q.paragraph))
            p = paragraphs[q.paragraph]
            located = [p.text[s:e] for s, e in p.sentences if q.answer in p.text[s:e]]
            changed = builder.unanswerable(q.text, located[0], p.article) if located else None
            if changed and rng.random() < 0.5:
                asked.append(("synthetic", changed[0], None, None))
        else:
            asked.append(("withheld", q.text, None, None))
    snapshot = assistant.snapshot()
    rows = []
    started = time.perf_counter()
    for number, (kind, text, answer, pid) in enumerate(asked):
        _, query, terms, ranked = assistant._search(snapshot, text, "hybrid", (), Filters())
        hits = tidy(ranked, 5, 1)
        began = time.perf_counter()
        readings = answering.read(query, terms, hits, snapshot.data, snapshot.retriever, reader, text, limit=limit)
        ms = (time.perf_counter() - began) * 1000
        data = snapshot.data
        candidates = []
        for r in readings:
            doc_id, s, e = data.sentences[r.row]
            sentence = data.documents[doc_id].text[s:e]
            span = data.documents[doc_id].text[r.span[0]:r.span[1]]
            candidates.append({"passage": r.passage, "row": r.row, "prior": r.prior, "logit": r.logit,
                               "doc": doc_id, "right": bool(answer) and _contains(sentence, answer),
                               "span": span})
        rows.append({"kind": kind, "question": text, "answer": answer, "paragraph": pid, "ms": ms,
                     "hits": [h.chunk.doc_id for h in hits], "candidates": candidates})
        if (number + 1) % 250 == 0:
            log(f"{number + 1}/{len(asked)} questions read, {time.perf_counter() - started:.0f} s")
    return rows


def decide(row: dict[str, Any], prior: float, limit: int, passage: float = 0.0) -> tuple[dict[str, Any] | None, float]:
    """The best candidate among the first `limit` shortlisted, and its score (see answer.read)."""
    shortlist = sorted(row["candidates"], key=lambda c: -c["prior"])[:limit]
    if not shortlist:
        return None, -math.inf

    def score(c: dict[str, Any]) -> float:
        return c["logit"] + prior * c["prior"] - passage * c["passage"]

    best = max(shortlist, key=score)
    return best, score(best)


def fit(rows: list[dict[str, Any]], priors: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0, 5.0),
        limits: tuple[int, ...] = (4, 6, 8, 10, 12, 16),
        passages: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)) -> list[dict[str, Any]]:
    """Every (prior, limit, passage) with its best threshold: answerable right, unanswerable abstained, overall."""
    answerable = [r for r in rows if r["kind"] == "answerable"]
    unanswerable = [r for r in rows if r["kind"] != "answerable"]
    table = []
    for prior, limit, passage in itertools.product(priors, limits, passages):
        pos = [decide(r, prior, limit, passage) for r in answerable]
        neg = [decide(r, prior, limit, passage)[1] for r in unanswerable]
        cuts = sorted({round(s, 2) for _, s in pos if s > -math.inf} | {round(s, 2) for s in neg if s > -math.inf})
        best = None
        for cut in cuts[::max(1, len(cuts) // 400)]:
            right = statistics.fmean(bool(c and c["right"]) and s >= cut for c, s in pos)
            abstained = statistics.fmean(s < cut for s in neg)
            # SQuAD v2.0 is half unanswerable: weigh the two halves equally.
            overall = (right + abstained) / 2
            if best is None or overall > best["overall"]:
                best = {"prior": prior, "limit": limit, "passage": passage, "threshold": cut, "answerable_right": right,
                        "abstained": abstained, "overall": overall,
                        "chosen_right": statistics.fmean(bool(c and c["right"]) for c, _ in pos),
                        "r1_retrieval": statistics.fmean(bool(r["hits"]) and r["hits"][0] == r["paragraph"]
                                                         for r in answerable),
                        "r1_read": statistics.fmean(bool(c) and c["doc"] == r["paragraph"]
                                                    for r, (c, _) in zip(answerable, pos))}
        if best:
            table.append(best)
    return sorted(table, key=lambda t: -t["overall"])


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="qa tune-reader", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/train/squad-v1.1-train"))
    parser.add_argument("--reader", type=Path, required=True, help="reader folder (model.onnx, tokenizer.json)")
    parser.add_argument("--work", type=Path, default=Path("bench/.cache/tune-reader"))
    parser.add_argument("--questions", type=int, default=1500)
    parser.add_argument("--out", type=Path, default=None, help="write the collected rows here (JSON lines)")
    args = parser.parse_args(argv)
    if not (args.data / "queries.jsonl").is_file():
        raise SystemExit(f"error: {args.data} has no queries.jsonl; pass --data with the SQuAD v1.1 train folder")
    rows = collect(args.data, args.work, args.reader, args.questions)
    if args.out:
        args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for line in fit(rows)[:10]:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in line.items()}))
    print(f"read p50 {statistics.median(r['ms'] for r in rows):.1f} ms at the largest shortlist")
    return 0
