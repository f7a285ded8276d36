"""Follow-up and keyword questions on the seed articles: prints figures, asserts nothing.

    python bench/followups.py [--split train|test|all] [--context-weight 0.3] [--model fake-256]

For each follow-up pair (bench/followup_questions.jsonl: earlier questions, the follow-up, the
article that answers it, accepted answers) it asks the follow-up with its history and, for
comparison, alone; for each keyword query (bench/keyword_questions.jsonl) it asks the query as
typed and, for comparison, with the keyword rewrite turned off. Figures: the share whose answer
sentence holds an accepted answer (answer), whose top passage holds one (top passage), and whose
top passage is from the right article (R@1). Tune only on --split train.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import unicodedata
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parent.parent


def _normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _holds(text: str, answers: Sequence[str]) -> bool:
    return any(_normalise(a) in _normalise(text) for a in answers)


def _score(result: Any, row: dict[str, Any]) -> dict[str, bool]:
    top = result.passages[0] if result.passages else None
    return {
        "answer": result.answer is not None and _holds(result.answer.text, row["answers"]),
        "top passage": top is not None and _holds(top.text, row["answers"]),
        "R@1": top is not None and top.doc_id == row["doc_id"],
    }


def _figures(scores: list[dict[str, bool]]) -> str:
    if not scores:
        return "n=0"
    return f"n={len(scores)}  " + "  ".join(f"{key} {statistics.fmean(s[key] for s in scores):.3f}" for key in scores[0])


def _rows(path: Path, split: str) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if split == "all" or row["split"] == split]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=("train", "test", "all"), default="test")
    parser.add_argument("--context-weight", type=float, default=None)
    parser.add_argument("--model", default=None, help="default: the packaged model")
    parser.add_argument("--verbose", action="store_true", help="print each question's answer")
    args = parser.parse_args(argv)

    from qa import conversation
    from qa.assistant import Assistant
    from qa.config import resolve

    with tempfile.TemporaryDirectory() as tmp:
        flags: dict[str, Any] = {"docs_dir": REPO / "seeds", "index_dir": Path(tmp) / "index"}
        if args.model:
            flags["model"] = args.model
        if args.context_weight is not None:
            flags["context_weight"] = args.context_weight
        assistant = Assistant(resolve(flags))
        assistant.build()

        followups = _rows(REPO / "bench" / "followup_questions.jsonl", args.split)
        pairs = [r for r in followups if not r.get("standalone")]
        with_history, alone = [], []
        for row in pairs:
            result = assistant.ask(row["question"], history=row["history"])
            with_history.append(_score(result, row))
            alone.append(_score(assistant.ask(row["question"]), row))
            if args.verbose:
                found = result.answer.text if result.answer else "-"
                print(f"{row['id']} {'ok ' if with_history[-1]['answer'] else 'BAD'} {result.resolved!r} -> {found[:100]}")
        standalone = [r for r in followups if r.get("standalone")]
        same = 0
        for row in standalone:
            a = assistant.ask(row["question"], history=row["history"])
            b = assistant.ask(row["question"])
            same += [p.doc_id for p in a.passages] == [p.doc_id for p in b.passages] and a.answer == b.answer

        keywords = _rows(REPO / "bench" / "keyword_questions.jsonl", args.split)
        as_typed = [_score(assistant.ask(row["question"]), row) for row in keywords]
        rewrite = conversation.as_question
        conversation.as_question = lambda question: question.strip()  # the behaviour before keyword queries were rewritten
        try:
            assistant._cache.clear()
            unrewritten = [_score(assistant.ask(row["question"]), row) for row in keywords]
        finally:
            conversation.as_question = rewrite

    print(f"split={args.split}  context_weight={assistant.settings.context_weight}  model={assistant.settings.model}")
    print(f"follow-ups with history:    {_figures(with_history)}")
    print(f"follow-ups without history: {_figures(alone)}")
    print(f"standalone questions after another: {same}/{len(standalone)} answered exactly as without history")
    print(f"keyword queries:            {_figures(as_typed)}")
    print(f"keyword queries, no rewrite: {_figures(unrewritten)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
