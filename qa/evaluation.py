"""`qa eval`: passage ranking, answer sentences, abstention and latency, measured with the real facade.

Sets: the public benchmarks in ../shared/eval (XQuAD-en, SQuAD v1.1 dev, SciFact) and our own
questions about the seed articles (bench/seed_questions.jsonl). Each benchmark corpus entry is
written as an article file (title line, blank line, text) into bench/.cache/<set>/docs and indexed
by `Assistant.build()` into bench/.cache/<set>/index; the build is incremental, so a second run
only loads it. Every query is asked once per mode (hybrid, dense, lexical), interleaved so that
machine load falls on all modes alike, with the answer cache off.

Ranking metrics are over articles: passages are mapped to their doc ids (for the benchmarks with
max_per_doc=1, so ten passages are ten documents). Answer accuracy is the share of answerable
questions whose chosen sentence contains a gold answer. Abstention is measured on the seed
questions, which include unanswerable ones; the trade-off table shows other thresholds.

Results replace the "## Retrieval quality" section of bench/RESULTS.md and leave other sections be.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import time
import unicodedata
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .config import Settings, resolve

REPO = Path(__file__).resolve().parent.parent
SECTION = "## Retrieval quality"
# "reader" is hybrid retrieval with the reader deciding the answer, the passage order and abstention; the
# other three answer with the sentence scorer (reader off), as before.
MODES = ("reader", "hybrid", "dense", "lexical")
TOP_K = 10
# Tuning happens on SQuAD v1.1 *train* only (its last TRAIN_HELD_OUT articles, never trained on by the
# reader); every SQuAD v1.1 dev question is reported.
TRAIN_HELD_OUT = 20
BENCHMARKS = {
    # name: (folder under --data, label)
    "xquad": ("xquad-en", "XQuAD-en"),
    "squad": ("squad-v1.1-dev", "SQuAD v1.1 dev"),
    "scifact": ("scifact", "SciFact"),
    "squad2": ("squad-v2.0-dev", "SQuAD v2.0 dev"),
}
SETS = ("xquad", "squad", "squad2", "scifact", "seeds")
DEFAULT_THRESHOLDS = (1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9)
# Targets from the "Answer quality" issue: (set, mode, metric, minimum, text).
TARGETS = (
    ("xquad", "ndcg10", 0.99, "XQuAD-en nDCG@10 >= 0.99"),
    ("squad", "r1", 0.88, "SQuAD v1.1 dev (all 10,570) R@1 >= 0.88"),
    ("squad", "span_f1", 0.70, "SQuAD v1.1 dev answer span F1 >= 0.70"),
    ("squad2", "overall", 0.75, "SQuAD v2.0 dev overall right >= 0.75"),
    ("squad2", "abstain_recall", 0.70, "SQuAD v2.0 dev unanswerable abstained >= 0.70"),
    ("squad2", "answerable_right", 0.75, "SQuAD v2.0 dev answerable answered correctly >= 0.75"),
    ("scifact", "ndcg10", 0.72, "SciFact test nDCG@10 >= 0.72"),
    ("seeds", "r1", 1.0, "seed questions: the right article first for every answerable one"),
    ("seeds", "answer_acc", 0.90, "seed questions: answer sentence holds the answer for >= 90%"),
    ("seeds", "abstain_recall", 6 / 7, "seed questions: >= 6 of 7 unanswerable abstained"),
    ("seeds", "answered", 0.90, "seed questions: >= 90% of answerable answered"),
)
LATENCY_LIMIT = 1.5
# Published by the issue for the same model, for reading the table: (set, system, nDCG@10, R@1).
PEERS = (
    ("XQuAD-en", "txtai hybrid", 0.9805, 0.955), ("XQuAD-en", "bm25s", 0.9615, None), ("XQuAD-en", "dense", 0.9438, None),
    ("SQuAD v1.1 dev (first 3,000)", "txtai hybrid", 0.8632, 0.751), ("SQuAD v1.1 dev (first 3,000)", "bm25s", 0.8164, 0.701),
    ("SQuAD v1.1 dev (first 3,000)", "dense", 0.7526, None),
    ("SciFact test", "txtai hybrid", 0.6498, None), ("SciFact test", "bm25s", 0.6617, None), ("SciFact test", "dense", 0.6451, None),
)


@dataclass(frozen=True)
class Query:
    qid: str
    text: str
    relevant: frozenset[str]  # doc ids; empty = the articles do not answer it
    answers: tuple[str, ...] = ()


@dataclass
class Bench:
    name: str
    label: str
    docs_dir: Path
    index_dir: Path
    queries: list[Query]
    max_per_doc: int | None  # None: keep the settings' value
    split_note: str
    cleaning: dict[str, Any] = field(default_factory=dict)


@dataclass
class Record:
    """One question asked in one mode."""

    qid: str
    mode: str
    ranked: list[str]  # doc ids, best first, each once
    first_passage_has_answer: bool | None
    answer: str | None  # the chosen sentence before the threshold is applied
    answer_score: float | None
    answer_correct: bool | None
    ms: float
    span: str | None = None  # the reader's exact answer words (reader mode only)


# --- loading -----------------------------------------------------------------------------------


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _qrels(path: Path) -> dict[str, set[str]]:
    relevant: dict[str, set[str]] = {}
    with path.open(encoding="utf-8") as handle:
        next(handle)  # header line
        for line in handle:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 3 and float(parts[2]) > 0:
                relevant.setdefault(parts[0], set()).add(parts[1])
    return relevant


def article_text(title: str, text: str) -> str:
    """How a benchmark entry becomes an article file: its title as the headline, then the text."""
    title = " ".join(title.split())
    return f"{title}\n\n{text.strip()}\n" if title else text.strip() + "\n"


def sync_docs(rows: Iterable[dict[str, Any]], docs_dir: Path) -> int:
    """Write each corpus entry as <id>.txt, rewriting only changed files and removing stale ones."""
    docs_dir.mkdir(parents=True, exist_ok=True)
    wanted: set[str] = set()
    written = 0
    for row in rows:
        name = f"{row['id']}.txt"
        if not re.fullmatch(r"[A-Za-z0-9._-]+\.txt", name):
            raise ValueError(f"corpus id {row['id']!r} cannot be a file name")
        wanted.add(name)
        data = article_text(row.get("title", ""), row["text"]).encode("utf-8")
        path = docs_dir / name
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)
            written += 1
    for path in docs_dir.glob("*.txt"):
        if path.name not in wanted:
            path.unlink()
    return written


def load_benchmark(name: str, data_dir: Path, cache_dir: Path, split: str) -> Bench:
    folder_name, label = BENCHMARKS[name]
    folder = data_dir / folder_name
    if name == "squad" and split == "train":
        return load_squad_train(data_dir.parent / "train" / "squad-v1.1-train", cache_dir)
    if name == "squad2" and split == "train":
        raise ValueError("SQuAD v2.0 dev is a test set; abstention is fitted on SQuAD v1.1 train (qa tune-reader)")
    if not (folder / "corpus.jsonl").is_file():
        raise FileNotFoundError(f"{folder / 'corpus.jsonl'} is missing; pass --data DIR")
    docs_dir = cache_dir / name / "docs"
    sync_docs(_jsonl(folder / "corpus.jsonl"), docs_dir)
    if name == "squad2":
        queries = [Query(str(q["id"]), q["text"], frozenset([q["written_for"]] if q["answerable"] else []),
                         tuple(q.get("answers") or ())) for q in _jsonl(folder / "queries.jsonl")]
        return Bench(name, label, docs_dir, cache_dir / name / "index", queries, 1,
                     "all questions, half unanswerable")
    if name == "scifact":
        suffix = "_train" if split == "train" else ""
        rows = _jsonl(folder / f"queries{suffix}.jsonl")
        qrels = _qrels(folder / f"qrels{suffix}.tsv")
        note = "BEIR train split (809 claims)" if split == "train" else "BEIR test split"
    else:
        rows = _jsonl(folder / "queries.jsonl")
        qrels = _qrels(folder / "qrels.tsv")
        note = "all queries"
        if name == "xquad" and split == "train":
            raise ValueError("XQuAD-en has no training split (tune on SQuAD v1.1 train)")
    queries = [Query(str(q["id"]), q["text"], frozenset(qrels.get(str(q["id"]), ())), tuple(q.get("answers") or ()))
               for q in rows if qrels.get(str(q["id"]))]
    return Bench(name, label, docs_dir, cache_dir / name / "index", queries, 1, note)


def load_squad_train(folder: Path, cache_dir: Path) -> Bench:
    """The tuning set: the last TRAIN_HELD_OUT articles of SQuAD v1.1 train (the reader never trained on them)."""
    if not (folder / "corpus.jsonl").is_file():
        raise FileNotFoundError(f"{folder / 'corpus.jsonl'} is missing: the train split needs ../shared/train")
    rows = _jsonl(folder / "corpus.jsonl")
    articles = sorted({r["id"].split("_")[0] for r in rows})[-TRAIN_HELD_OUT:]
    rows = [r for r in rows if r["id"].split("_")[0] in articles]
    kept = {r["id"] for r in rows}
    docs_dir = cache_dir / "squad-train" / "docs"
    sync_docs(rows, docs_dir)
    queries = [Query(q["id"], q["text"], frozenset([q["doc"]]), tuple(q["answers"]))
               for q in _jsonl(folder / "queries.jsonl") if q["doc"] in kept]
    return Bench("squad", "SQuAD v1.1 train (held-out articles)", docs_dir, cache_dir / "squad-train" / "index",
                 queries, 1, f"last {TRAIN_HELD_OUT} articles")


def load_seeds(questions_path: Path, docs_dir: Path, cache_dir: Path, split: str) -> Bench:
    if not questions_path.is_file():
        raise FileNotFoundError(f"{questions_path} is missing")
    queries = []
    for row in _jsonl(questions_path):
        if row.get("split") != split:
            continue
        relevant = frozenset([row["doc_id"]]) if row.get("doc_id") else frozenset()
        queries.append(Query(str(row["id"]), row["question"], relevant, tuple(row.get("answers") or ())))
    # The seed articles are few and long: passages keep the product's own per-article cap.
    return Bench("seeds", "Seed questions", docs_dir, cache_dir / "seeds" / "index", queries, None, f"split={split}")


# --- measuring ---------------------------------------------------------------------------------


def normalise(text: str) -> str:
    """Compare answers as cleaning leaves text: NFKC, case-folded, single spaces."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def contains_answer(text: str, answers: Sequence[str]) -> bool:
    haystack = normalise(text)
    return any(normalise(a) and normalise(a) in haystack for a in answers)


def ndcg(ranked: Sequence[str], relevant: frozenset[str], k: int = 10) -> float:
    dcg = sum(1 / math.log2(i + 2) for i, doc in enumerate(ranked[:k]) if doc in relevant)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    return dcg / ideal if ideal else 0.0


def recall(ranked: Sequence[str], relevant: frozenset[str], k: int) -> float:
    return len(set(ranked[:k]) & relevant) / len(relevant) if relevant else 0.0


def reciprocal_rank(ranked: Sequence[str], relevant: frozenset[str], k: int = 10) -> float:
    for i, doc in enumerate(ranked[:k]):
        if doc in relevant:
            return 1 / (i + 1)
    return 0.0


def cleaning_stats(bench: Bench, data: Any) -> dict[str, Any]:
    """How much of the article files cleaning removed (non-space characters), and which files lost text."""
    raw_chars = kept_chars = 0
    touched: list[tuple[str, int]] = []
    titles_differ = 0
    for path in sorted(bench.docs_dir.glob("*.txt")):
        raw = unicodedata.normalize("NFKC", path.read_text(encoding="utf-8"))
        raw_count = sum(not c.isspace() for c in raw)
        doc = data.documents.get(path.stem)
        kept = sum(not c.isspace() for c in doc.text) if doc is not None else 0
        raw_chars += raw_count
        kept_chars += kept
        if kept < raw_count:
            touched.append((path.stem, raw_count - kept))
        first_line = raw.split("\n", 1)[0].strip()
        if doc is not None and bench.name != "seeds" and doc.title != first_line:
            titles_differ += 1
    return {
        "files": len(list(bench.docs_dir.glob("*.txt"))),
        "indexed": len(data.documents),
        "chars": raw_chars,
        "removed": raw_chars - kept_chars,
        "files_touched": len(touched),
        "worst": sorted(touched, key=lambda t: -t[1])[:3],
        "titles_differ": titles_differ,
    }


def run_bench(bench: Bench, settings: Settings, embedder: Any, modes: Sequence[str],
              log: Callable[[str], None]) -> list[Record]:
    """Build (or reuse) the set's index and ask every question in every mode."""
    from .assistant import Assistant

    # The threshold is applied here, not in ask(), so one run gives the whole trade-off.
    per_doc = settings.max_per_doc if bench.max_per_doc is None else bench.max_per_doc
    run_settings = replace(settings, docs_dir=bench.docs_dir, index_dir=bench.index_dir, cache_size=0,
                           max_per_doc=per_doc, answer_threshold=-math.inf, reader_threshold=-math.inf)
    assistant = Assistant(replace(run_settings, reader="off"), embedder=embedder)
    reading = Assistant(run_settings, embedder=embedder) if "reader" in modes else None
    if reading is not None and reading.reader() is None:
        raise ValueError("the reader mode needs a reader: unset QA_READER=off or drop 'reader' from --modes")
    started = time.perf_counter()
    report = assistant.build(log=log)
    log(f"{bench.label}: index of {report.documents} articles, {report.passages} passages "
        f"({'built' if report.version else 'reused'}, {time.perf_counter() - started:.0f}s)")
    if report.skipped:
        log(f"{bench.label}: {len(report.skipped)} articles skipped by cleaning")
    bench.cleaning = cleaning_stats(bench, assistant.snapshot().data)
    if reading is not None:
        reading.load()

    def ask(text: str, mode: str) -> Any:
        if mode == "reader":
            return reading.ask(text, TOP_K, "hybrid")
        return assistant.ask(text, TOP_K, mode)

    for mode in modes:  # warm up: the first question pays for lazy imports and allocation
        ask("warm up question", mode)
    records: list[Record] = []
    started = time.perf_counter()
    for number, query in enumerate(bench.queries):
        order = modes[number % len(modes):] + modes[:number % len(modes)]
        for mode in order:
            began = time.perf_counter()
            result = ask(query.text, mode)
            ms = (time.perf_counter() - began) * 1000
            ranked = list(dict.fromkeys(p.doc_id for p in result.passages))
            found = result.answer
            has = correct = None
            if query.answers and query.relevant:
                has = bool(result.passages) and contains_answer(result.passages[0].text, query.answers)
                correct = found is not None and contains_answer(found.text, query.answers)
            records.append(Record(query.qid, mode, ranked, has, found.text if found else None,
                                  found.score if found else None, correct, ms, found.words if found else None))
        if (number + 1) % 500 == 0:
            log(f"{bench.label}: {number + 1}/{len(bench.queries)} questions, {time.perf_counter() - started:.0f}s")
    return records


def summarise(bench: Bench, records: list[Record], mode: str, threshold: float) -> dict[str, Any]:
    by_id = {q.qid: q for q in bench.queries}
    rows = [r for r in records if r.mode == mode]
    answerable = [r for r in rows if by_id[r.qid].relevant]
    out: dict[str, Any] = {"queries": len(rows), "answerable": len(answerable)}
    if answerable:
        rel = [by_id[r.qid].relevant for r in answerable]
        out["ndcg10"] = statistics.fmean(ndcg(r.ranked, g) for r, g in zip(answerable, rel))
        for k in (1, 5, 10):
            out[f"r{k}"] = statistics.fmean(recall(r.ranked, g, k) for r, g in zip(answerable, rel))
        out["mrr10"] = statistics.fmean(reciprocal_rank(r.ranked, g) for r, g in zip(answerable, rel))
        with_answers = [r for r in answerable if r.answer_correct is not None]
        if with_answers:
            out["answer_acc"] = statistics.fmean(bool(r.answer_correct) for r in with_answers)
            out["passage1_has_answer"] = statistics.fmean(bool(r.first_passage_has_answer) for r in with_answers)
        out["answered"] = statistics.fmean(_answered(r, threshold) for r in answerable)
        if with_answers:
            out["answerable_right"] = statistics.fmean(bool(r.answer_correct) and _answered(r, threshold)
                                                       for r in with_answers)
        if any(r.span is not None for r in answerable):
            from .training.card import span_em, span_f1

            gold = {q.qid: q.answers for q in bench.queries}
            out["span_em"] = statistics.fmean(max((span_em(r.span or "", a) for a in gold[r.qid]), default=0.0)
                                              for r in answerable)
            out["span_f1"] = statistics.fmean(max((span_f1(r.span or "", a) for a in gold[r.qid]), default=0.0)
                                              for r in answerable)
    unanswerable = [r for r in rows if not by_id[r.qid].relevant]
    if unanswerable:
        abstained = [r for r in rows if not _answered(r, threshold)]
        out["unanswerable"] = len(unanswerable)
        out["abstain_recall"] = statistics.fmean(not _answered(r, threshold) for r in unanswerable)
        out["abstain_precision"] = (sum(not by_id[r.qid].relevant for r in abstained) / len(abstained)
                                    if abstained else float("nan"))
        if "answerable_right" in out:
            right = sum(bool(r.answer_correct) and _answered(r, threshold) for r in answerable)
            out["overall"] = (right + sum(not _answered(r, threshold) for r in unanswerable)) / len(rows)
    times = sorted(r.ms for r in rows)
    out["ms_p50"] = statistics.median(times) if times else float("nan")
    out["ms_p95"] = times[min(len(times) - 1, int(0.95 * len(times)))] if times else float("nan")
    out["ms_mean"] = statistics.fmean(times) if times else float("nan")
    return out


def threshold_of(settings: Settings, mode: str) -> float:
    """The abstention threshold a mode answers with: the reader's own, or the sentence scorer's."""
    return settings.reader_threshold if mode == "reader" else settings.answer_threshold


def reader_thresholds(settings: Settings) -> list[float]:
    return sorted({-2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, settings.reader_threshold})


def _answered(record: Record, threshold: float) -> bool:
    return record.answer_score is not None and record.answer_score >= threshold


def tradeoff(bench: Bench, records: list[Record], thresholds: Sequence[float], mode: str = "hybrid") -> list[dict[str, Any]]:
    by_id = {q.qid: q for q in bench.queries}
    rows = [r for r in records if r.mode == mode]
    answerable = [r for r in rows if by_id[r.qid].relevant]
    unanswerable = [r for r in rows if not by_id[r.qid].relevant]
    out = []
    for threshold in thresholds:
        answered = [r for r in answerable if _answered(r, threshold)]
        out.append({
            "threshold": threshold,
            "answered": len(answered),
            "answerable": len(answerable),
            "answered_correct": sum(bool(r.answer_correct) for r in answered),
            "abstained_unanswerable": sum(not _answered(r, threshold) for r in unanswerable),
            "unanswerable": len(unanswerable),
        })
    return out


# --- reporting ---------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render(results: dict[str, dict[str, Any]], settings: Settings, split: str, limit: int | None,
           thresholds: Sequence[float], backend: str = "", measured: datetime | None = None) -> str:
    now = measured or datetime.now(timezone.utc)
    lines = [
        SECTION,
        "",
        f"Measured {now:%Y-%m-%d %H:%M} UTC by `qa eval` (`python -m qa.evaluation`), {split} queries"
        + (f", at most {limit} per set" if limit else "") + ". "
        "`reader` (hybrid retrieval, the reader answering) is the default; `hybrid` is the same retrieval with the "
        "reader off, and BM25-only (`lexical`) and dense-only baselines were measured in the same run, each "
        "question asked in every mode in turn, answer cache off, top_k=10.",
        "",
        f"Settings: model `{settings.model}`" + (f" ({backend} backend)" if backend else "")
        + f", chunk_chars={settings.chunk_chars}, rrf_k={settings.rrf_k}, "
        f"dense_weight={settings.dense_weight}, answer_threshold={settings.answer_threshold}, "
        f"reader={settings.reader}, reader_threshold={settings.reader_threshold}, "
        f"max_per_doc={settings.max_per_doc} (1 for the public benchmarks, so ten passages are ten documents).",
        "",
        "| set | split | queries | mode | nDCG@10 | R@1 | R@5 | R@10 | MRR@10 | answer acc | answered | abst. P | abst. R | p50 ms | p95 ms |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, result in results.items():
        for mode, m in result["metrics"].items():
            lines.append(
                f"| {result['label']} | {result['split_note']} | {m['queries']} | {mode} | {_fmt(m.get('ndcg10'))} | "
                f"{_fmt(m.get('r1'))} | {_fmt(m.get('r5'))} | {_fmt(m.get('r10'))} | {_fmt(m.get('mrr10'))} | "
                f"{_fmt(m.get('answer_acc'), 3)} | {_fmt(m.get('answered'), 3)} | {_fmt(m.get('abstain_precision'), 3)} | "
                f"{_fmt(m.get('abstain_recall'), 3)} | {_fmt(m.get('ms_p50'), 1)} | {_fmt(m.get('ms_p95'), 1)} |"
            )
    lines += [
        "",
        "nDCG, recall and MRR are over documents (SciFact: abstracts; SQuAD/XQuAD: paragraphs; seeds: articles). "
        "*answer acc*: share of answerable questions whose chosen sentence contains a gold answer (before the "
        "abstention threshold). *answered*: share of answerable questions answered at the threshold. "
        "*abst. P/R*: of abstentions, the share on unanswerable questions / of unanswerable questions, the share "
        "abstained (only the seed set has unanswerable questions). Latency: wall time of `Assistant.ask` "
        "(question embedding, retrieval, answer sentence).",
        "",
        "### Targets",
        "",
        "| target | measured (reader on; hybrid if the run had no reader) | met |",
        "|---|---:|---|",
    ]
    for name, metric, minimum, text in TARGETS:
        by_mode = results.get(name, {}).get("metrics", {})
        m = by_mode.get("reader") or by_mode.get("hybrid")
        if not m or metric not in m:
            lines.append(f"| {text} | not measured | – |")
            continue
        value = m[metric]
        shown = (f"{round(value * m.get('unanswerable', 0))}/{m.get('unanswerable')}"
                 if metric == "abstain_recall" and name == "seeds" else _fmt(value))
        lines.append(f"| {text} | {shown} | {'yes' if value >= minimum - 1e-9 else '**no**'} |")
    for name, result in results.items():
        h, d = result["metrics"].get("hybrid"), result["metrics"].get("dense")
        if h and d and d["ms_p50"] > 0:
            ratio = h["ms_p50"] / d["ms_p50"]
            lines.append(f"| {result['label']}: hybrid latency <= {LATENCY_LIMIT}x dense-only (median) | "
                         f"{h['ms_p50']:.1f} / {d['ms_p50']:.1f} ms = {ratio:.2f}x | "
                         f"{'yes' if ratio <= LATENCY_LIMIT else '**no**'} |")
    lines += ["", "### Reading and abstention", "",
              "*answerable right*: answered at the threshold with a sentence holding a gold answer; *abstained*: "
              "unanswerable questions given no answer; *overall*: both, over all questions. Span EM / F1 (SQuAD's "
              "normalisation) over answerable questions, the reader's span of its chosen sentence.", "",
              "| set | mode | answerable right | abstained | overall | span EM | span F1 | p50 ms |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for result in results.values():
        for mode, m in result["metrics"].items():
            if "answerable_right" in m:
                lines.append(f"| {result['label']} | {mode} | {_fmt(m.get('answerable_right'), 3)} | "
                             f"{_fmt(m.get('abstain_recall'), 3)} | {_fmt(m.get('overall'), 3)} | "
                             f"{_fmt(m.get('span_em'), 3)} | {_fmt(m.get('span_f1'), 3)} | {_fmt(m.get('ms_p50'), 1)} |")
    for result in results.values():
        rows = result.get("reader_tradeoff") or []
        if rows and rows[0]["unanswerable"]:
            lines += ["", f"Reader thresholds on {result['label']} (answered / answered correctly / abstained):", "",
                      "| reader threshold | answered (correct) | abstained |", "|---:|---:|---:|"]
            for t in rows:
                default = " (default)" if abs(t["threshold"] - settings.reader_threshold) < 1e-9 else ""
                lines.append(f"| {t['threshold']:.2f}{default} | {t['answered']}/{t['answerable']} "
                             f"({t['answered_correct']}) | {t['abstained_unanswerable']}/{t['unanswerable']} |")
    lines += ["", "Peers measured with the same model (from the issue, not measured here):", "",
              "| set | system | nDCG@10 | R@1 |", "|---|---|---:|---:|"]
    lines += [f"| {name} | {system} | {ndcg_value:.4f} | {_fmt(r1)} |" for name, system, ndcg_value, r1 in PEERS]
    lines += ["", "### Abstention trade-off (hybrid)", "",
              "Answers below the threshold are withheld. Columns: answerable questions answered (and of those, "
              "answered with a sentence holding the gold answer); unanswerable questions abstained.", ""]
    header = "| threshold | " + " | ".join(
        f"{r['label']} answered (correct)" + (" | " + f"{r['label']} abstained" if r["tradeoff"] and r["tradeoff"][0]["unanswerable"] else "")
        for r in results.values() if r["tradeoff"]) + " |"
    if any(r["tradeoff"] for r in results.values()):
        lines.append(header)
        lines.append("|" + "|".join("---:" for _ in range(header.count("|") - 1)) + "|")
        for i, threshold in enumerate(thresholds):
            cells = [f"{threshold:.2f}" + (" (default)" if abs(threshold - settings.answer_threshold) < 1e-9 else "")]
            for r in results.values():
                if not r["tradeoff"]:
                    continue
                t = r["tradeoff"][i]
                cells.append(f"{t['answered']}/{t['answerable']} ({t['answered_correct']})")
                if t["unanswerable"]:
                    cells.append(f"{t['abstained_unanswerable']}/{t['unanswerable']}")
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "### Corpus cleaning", "",
              "Benchmark entries are written as article files (title line, blank line, text) and go through the "
              "same cleaning as news articles. Non-space characters removed by cleaning:", "",
              "| set | files | indexed | characters | removed | files losing text | title kept as headline |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for result in results.values():
        c = result["cleaning"]
        if not c:
            continue
        share = c["removed"] / c["chars"] if c["chars"] else 0.0
        titles = "–" if result["name"] == "seeds" else f"{c['files'] - c['titles_differ']}/{c['files']}"
        lines.append(f"| {result['label']} | {c['files']} | {c['indexed']} | {c['chars']:,} | {c['removed']:,} "
                     f"({share:.3%}) | {c['files_touched']} | {titles} |")
    return "\n".join(lines) + "\n"


def make_embedder(settings: Settings, backend: str | None) -> Any:
    """The embedder the assistant would make, or the one a --backend names."""
    if backend is None:
        from .assistant import Assistant

        return Assistant(settings).embedder
    from .embedding import create

    return create(settings.model, settings.batch_size, backend=backend)  # type: ignore[call-arg]


def backend_tag(embedder: Any) -> str:
    """A short name for how vectors are made: torch, onnx-int8, onnx-fp32, or the embedder's name."""
    kind = type(embedder).__name__
    if kind == "SentenceTransformerEmbedder":
        return "torch"
    if kind == "OnnxEmbedder":
        return "onnx-int8" if getattr(embedder, "quantize", True) else "onnx-fp32"
    return re.sub(r"[^A-Za-z0-9.-]+", "-", str(getattr(embedder, "name", kind))).strip("-") or kind


def replace_section(document: str, section: str, heading: str = SECTION) -> str:
    """Swap one level-2 section of a results file (up to the next level-2 heading) for a new one."""
    lines = document.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        prefix = document.rstrip("\n")
        return (prefix + "\n\n" if prefix else "") + section
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = "".join(lines[end:])
    return "".join(lines[:start]) + section + ("\n" + tail if tail else "")


# --- command -----------------------------------------------------------------------------------


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qa eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS), help="which sets (default all)")
    parser.add_argument("--split", choices=("test", "train"), default="test",
                        help="test: the reported queries (default); train: the tuning queries (written only with --out)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="modes to compare (default all)")
    parser.add_argument("--limit", type=int, metavar="N", help="at most N queries per set (a quick look)")
    parser.add_argument("--data", type=Path, metavar="DIR", help="benchmark folder (default ../shared/eval beside the repo)")
    parser.add_argument("--questions", type=Path, metavar="FILE", help="seed questions (default bench/seed_questions.jsonl)")
    parser.add_argument("--seeds", type=Path, metavar="DIR", help="seed articles (default seeds/)")
    parser.add_argument("--cache", type=Path, metavar="DIR", help="article files and indexes (default bench/.cache)")
    parser.add_argument("--out", type=Path, metavar="FILE",
                        help="results file to update (default bench/RESULTS.md, written only by a full test run)")
    parser.add_argument("--no-write", action="store_true", help="print the table, do not touch the results file")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every question's record as JSON")
    parser.add_argument("--backend", metavar="NAME",
                        help="embedding backend to measure (default: the one the assistant uses); indexes are cached per backend")
    parser.add_argument("--thresholds", type=float, nargs="+", metavar="T", help="abstention thresholds to tabulate")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(list(sys.argv[1:] if argv is None else argv))

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    from .errors import QAError

    try:
        settings = resolve()
    except QAError as exc:
        log(f"error: {exc}")
        return 1
    data_dir = args.data or REPO / ".." / "shared" / "eval"
    cache_dir = args.cache or REPO / "bench" / ".cache"
    questions = args.questions or REPO / "bench" / "seed_questions.jsonl"
    seeds_dir = args.seeds or REPO / "seeds"
    thresholds = sorted(set(args.thresholds or DEFAULT_THRESHOLDS) | {settings.answer_threshold})
    modes = [m for m in MODES if m in args.modes]
    try:
        embedder = make_embedder(settings, args.backend)
    except (QAError, TypeError) as exc:
        log(f"error: cannot make the {args.backend or 'default'} embedder: {exc}")
        return 1
    tag = backend_tag(embedder)
    log(f"embedder: {settings.model} ({tag})")
    results: dict[str, dict[str, Any]] = {}
    all_records: dict[str, list[dict[str, Any]]] = {}
    for name in [s for s in SETS if s in args.sets]:
        try:
            if name == "seeds":
                bench = load_seeds(questions, seeds_dir, cache_dir, args.split)
            else:
                bench = load_benchmark(name, data_dir, cache_dir, args.split)
        except (FileNotFoundError, ValueError) as exc:
            log(f"skipping {name}: {exc}")
            continue
        # Indexes are kept per embedding backend, so vectors of two backends never meet.
        bench.index_dir = cache_dir / name / f"index-{tag}"
        if args.limit:
            bench.queries = bench.queries[:args.limit]
        if not bench.queries:
            log(f"skipping {name}: no {args.split} questions")
            continue
        try:
            records = run_bench(bench, settings, embedder, modes, log)
        except QAError as exc:
            log(f"error in {name}: {exc}")
            return 1
        metrics = {mode: summarise(bench, records, mode, threshold_of(settings, mode)) for mode in modes}
        has_answers = any(q.answers for q in bench.queries)
        results[name] = {
            "name": name, "label": bench.label, "split_note": bench.split_note, "metrics": metrics,
            "cleaning": bench.cleaning,
            "tradeoff": tradeoff(bench, records, thresholds) if has_answers and "hybrid" in modes else [],
            "reader_tradeoff": (tradeoff(bench, records, reader_thresholds(settings), "reader")
                                if has_answers and "reader" in modes else []),
        }
        all_records[name] = [r.__dict__ for r in records]
        for mode, m in metrics.items():
            log(f"{bench.label:>16} {mode:>7}: nDCG@10 {_fmt(m.get('ndcg10'))} R@1 {_fmt(m.get('r1'))} "
                f"MRR@10 {_fmt(m.get('mrr10'))} answer {_fmt(m.get('answer_acc'), 3)} "
                f"answered {_fmt(m.get('answered'), 3)} abstainR {_fmt(m.get('abstain_recall'), 3)} "
                f"p50 {m['ms_p50']:.1f}ms")
    if not results:
        log("error: no set could be measured")
        return 1
    section = render(results, settings, args.split, args.limit, thresholds, tag)
    print(section)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"results": results, "records": all_records}, indent=1, default=str))
    # Only a full test run replaces the published table, unless --out asks for it.
    complete = args.split == "test" and not args.limit and set(results) == set(SETS) and len(modes) == len(MODES)
    write = not args.no_write and (args.out is not None or complete)
    if not write and not args.no_write:
        log("not writing bench/RESULTS.md: a partial run (a subset, --limit or --split train); pass --out FILE to write")
    if write:
        out = args.out or REPO / "bench" / "RESULTS.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        before = out.read_text(encoding="utf-8") if out.is_file() else "# Benchmark results\n"
        out.write_text(replace_section(before, section), encoding="utf-8")
        log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
