"""Keyword queries made from SQuAD v1.1 train questions: how they fare against the full questions. Prints figures.

    python bench/keyword_squad.py [--start 3000] [--count 400] [--reader default|off] [--withheld] [--json FILE]

A keyword query is what a user types for a question without its question word: "What is the area of
the Hetao zone?" -> "area of the Hetao zone", "How many patents did HKUST file?" -> "number of patents
HKUST file", "When was the park opened?" -> "date park opened". `keywords_of` does this by one
general rule (drop the question word and the auxiliary, put a noun that says what is asked where the
question word said it); questions it cannot turn into a keyword query of at most
conversation.MAX_KEYWORDS words are left out. The questions are those of the tuning set `qa eval
--split train` uses (the last articles of SQuAD v1.1 train, which the reader never trained on), from
--start on; each is asked as written and as keywords, with the reader on unless --reader off.
Figures: the share whose answer sentence holds the gold answer (answer), whose top passage holds it
(top passage), and whose top passage is from the question's paragraph (R@1); the answer counts only when
its score clears the threshold, "best sentence" whatever its score. With --withheld, half the paragraphs
are left out of the index so that the questions on them are unanswerable, and the share right by
threshold shows whether keyword queries want a threshold of their own. Training data only.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from qa import conversation
from qa.evaluation import contains_answer, load_squad_train

REPO = Path(__file__).resolve().parent.parent

_WH = re.compile(r"^(?:(?:in|on|at|by|from|for|during|to|of|with|after|before|since|until)\s+)?"
                 r"(?P<wh>what|which|who|whom|whose|when|where|why|how)\b\s*(?P<rest>.*)$", re.IGNORECASE | re.DOTALL)
_AUX = r"is|are|was|were|do|does|did|has|have|had|can|could|will|would|should|may|might|must|shall"
_LEADING_AUX = re.compile(rf"^(?:{_AUX})\b\s*", re.IGNORECASE)
# "did", "does" and "do" in a question are almost always the auxiliary that moved to the front.
_DO = re.compile(r"\b(?:do|does|did)\b\s*", re.IGNORECASE)
_ARTICLE = re.compile(r"^(?:the|a|an)\s+", re.IGNORECASE)
# "how long" asks for a length: the noun a keyword user types for what "how" + adjective asks.
_HOW_NOUN = {"long": "length", "old": "age", "big": "size", "large": "size", "tall": "height", "high": "height",
             "far": "distance", "often": "frequency", "fast": "speed", "wide": "width", "deep": "depth",
             "heavy": "weight"}
# The noun that stands for a question word that has none after it.
_WH_NOUN = {"when": "date", "where": "location", "why": "reason"}


def keywords_of(question: str) -> str | None:
    """The keyword query a question stands for, or None when it does not start with a question word."""
    match = _WH.match(question.strip().rstrip("?. ").strip())
    if not match:
        return None
    wh, rest = match.group("wh").lower(), match.group("rest")
    cue = ""
    if wh == "how":
        first, _, after = rest.partition(" ")
        first = first.lower()
        if first == "many":
            cue, rest = "number of", after
        elif first == "much":
            rest = after
        elif first in _HOW_NOUN:
            cue, rest = _HOW_NOUN[first], after
    elif wh in _WH_NOUN:
        cue = _WH_NOUN[wh]
    rest = _LEADING_AUX.sub("", rest)
    rest = _DO.sub("", rest)
    rest = _ARTICLE.sub("", rest.strip())
    text = " ".join(f"{cue} {rest}".split())
    if not text or not conversation.is_keywords(text):
        return None
    return text


def _score(result: Any, answers: Sequence[str], doc: str, threshold: float) -> dict[str, bool]:
    top = result.passages[0] if result.passages else None
    best = result.answer is not None and contains_answer(result.answer.text, answers)
    return {
        "answer": best and result.answer.score >= threshold,
        "best sentence": best,
        "answered": result.answer is not None and result.answer.score >= threshold,
        "top passage": top is not None and contains_answer(top.text, answers),
        "R@1": top is not None and top.doc_id == doc,
    }


def _figures(scores: list[dict[str, bool]]) -> str:
    if not scores:
        return "n=0"
    return f"n={len(scores)}  " + "  ".join(f"{key} {statistics.fmean(s[key] for s in scores):.3f}" for key in scores[0])


def _indexed(paragraph: str) -> bool:
    """Whether a paragraph ("AAA_PPP") is indexed under --withheld: the even ones are."""
    return int(paragraph.split("_")[1]) % 2 == 0


def _tabulate(rows: list[dict[str, Any]], threshold: float) -> None:
    """The share right at each threshold, for the questions and for their keyword queries."""
    print(f"threshold  right (questions)  right (keyword queries)   [{sum(r['answerable'] for r in rows)} answerable, "
          f"{sum(not r['answerable'] for r in rows)} unanswerable]")
    for t in sorted({threshold, *(x / 2 for x in range(-4, 9))}):
        shares = []
        for form, score in (("full", "full_score"), ("keyword", "keyword_score")):
            right = 0
            for r in rows:
                answered = r[score] is not None and r[score] >= t
                right += (answered and r[form]["best sentence"]) if r["answerable"] else not answered
            shares.append(right / len(rows))
        print(f"{t:9.2f}  {shares[0]:17.3f}  {shares[1]:23.3f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--start", type=int, default=3000, help="first question of the tuning set to use")
    parser.add_argument("--count", type=int, default=400, help="at most this many keyword queries")
    parser.add_argument("--reader", default=None, help="'off' to answer without the reader")
    parser.add_argument("--cache", type=Path, default=REPO / "bench" / ".cache", help="article files and index")
    parser.add_argument("--json", type=Path, help="write each question's result here")
    parser.add_argument("--show", type=int, default=0, help="print this many questions the keywords lose")
    parser.add_argument("--withheld", action="store_true",
                        help="index only the even paragraphs: questions on the others are unanswerable, and the "
                             "share right (answered correctly or rightly abstained) is tabulated by threshold")
    args = parser.parse_args(argv)

    from qa.assistant import Assistant
    from qa.config import resolve

    bench = load_squad_train(REPO.parent / "shared" / "train" / "squad-v1.1-train", args.cache)
    pairs = [(q, kw) for q in bench.queries[args.start:] if (kw := keywords_of(q.text))][:args.count]
    if args.withheld:
        # As qa tune-reader does: the article's other paragraphs are indexed and look relevant, its own is not.
        half = args.cache / "squad-train-half"
        (half / "docs").mkdir(parents=True, exist_ok=True)
        for path in sorted(bench.docs_dir.glob("*.txt")):
            target = half / "docs" / path.name
            if _indexed(path.stem) and not target.exists():
                target.write_bytes(path.read_bytes())
        bench = replace(bench, docs_dir=half / "docs", index_dir=half / "index")
    flags: dict[str, Any] = {} if args.reader is None else {"reader": args.reader}
    settings = resolve(flags)
    threshold = settings.reader_threshold if settings.reader != "off" else settings.answer_threshold
    # The threshold is applied here, so the best sentence is known for abstentions too.
    settings = replace(settings, docs_dir=bench.docs_dir, index_dir=bench.index_dir, cache_size=0, max_per_doc=1,
                       answer_threshold=-math.inf, reader_threshold=-math.inf)
    assistant = Assistant(settings)
    assistant.build(log=lambda m: print(m, file=sys.stderr))
    full, short, rows = [], [], []
    for query, kw in pairs:
        doc = next(iter(query.relevant))
        if args.withheld and not _indexed(doc):
            a, b = assistant.ask(query.text, 10), assistant.ask(kw, 10)
            rows.append({"id": query.qid, "question": query.text, "keywords": kw, "resolved": b.resolved,
                         "answerable": False, "full_score": a.answer.score if a.answer else None,
                         "keyword_score": b.answer.score if b.answer else None})
            continue
        a, b = assistant.ask(query.text, 10), assistant.ask(kw, 10)
        full.append(_score(a, query.answers, doc, threshold))
        short.append(_score(b, query.answers, doc, threshold))
        rows.append({"id": query.qid, "question": query.text, "keywords": kw, "resolved": b.resolved,
                     "answerable": True, "answers": list(query.answers), "full": full[-1], "keyword": short[-1],
                     "full_answer": a.answer.text if a.answer else None,
                     "full_score": a.answer.score if a.answer else None,
                     "keyword_answer": b.answer.text if b.answer else None,
                     "keyword_score": b.answer.score if b.answer else None})
    print(f"SQuAD v1.1 train (tuning articles) from question {args.start}, reader={settings.reader}")
    print(f"full questions:  {_figures(full)}")
    print(f"keyword queries: {_figures(short)}")
    if args.withheld:
        _tabulate(rows, threshold)
    rows_answerable = [r for r in rows if r["answerable"]]
    lost = [r for r in rows_answerable if r["full"]["answer"] and not r["keyword"]["answer"]]
    won = [r for r in rows_answerable if r["keyword"]["answer"] and not r["full"]["answer"]]
    print(f"answer right as a question only: {len(lost)}; as keywords only: {len(won)}")
    for r in lost[:args.show]:
        print(f"- {r['question']!r} -> {r['keywords']!r} -> {r['resolved']!r}\n    gold {r['answers'][0]!r}; "
              f"got {str(r['keyword_answer'])[:120]!r} ({r['keyword_score']:.2f} against {r['full_score']:.2f})")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
