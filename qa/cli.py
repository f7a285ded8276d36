"""The `qa` command: flags in, one facade call, text or JSON out."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from .config import Settings, resolve
from .errors import QAError


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--docs", dest="docs_dir", metavar="DIR", help="articles folder (QA_DOCS_DIR, default seeds/)")
    parser.add_argument("--index", dest="index_dir", metavar="DIR", help="index folder (QA_INDEX_DIR, default index/)")
    parser.add_argument("--model", metavar="NAME_OR_PATH", help="sentence-transformers model (QA_MODEL, default the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--backend", choices=("onnx", "onnx-fp32", "torch"), help="how the model runs (QA_BACKEND, default onnx)")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qa", description="Ask questions of a folder of news articles, offline, with citations.",
        epilog="Exit status: 0 on success, 1 when the assistant reports an error, 2 when the command line is wrong.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    index = commands.add_parser("index", help="build or update the index from the articles folder")
    _common(index)
    index.add_argument("--full", action="store_true", help="re-embed every article instead of only changed ones")
    index.add_argument("--ray", dest="ray_address", metavar="ADDRESS",
                       help="clean, chunk and embed the changed articles on this Ray cluster, 'auto' for the one "
                            "running here (QA_RAY_ADDRESS; needs the ray extra: pip install 'qa[ray]')")

    add = commands.add_parser("add", help="copy articles into the articles folder and index just them")
    _common(add)
    add.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="article files: .txt, .md, .html, .htm or .pdf")

    remove = commands.add_parser("remove", help="delete an article from the folder and the index")
    _common(remove)
    remove.add_argument("doc_id", metavar="DOC_ID")

    ask = commands.add_parser("ask", help="answer a question with cited passages")
    _common(ask)
    ask.add_argument("question")
    ask.add_argument("--top-k", type=int, dest="top_k", metavar="N", help="passages to show, 1-50 (default 5)")
    ask.add_argument("--mode", choices=("hybrid", "dense", "lexical"), help="retrieval mode (default hybrid)")
    ask.add_argument("--json", action="store_true", help="print the result as JSON")
    ask.add_argument("--history", action="append", metavar="QUESTION",
                     help="an earlier question of the conversation, for a follow-up; repeat it, oldest first")
    ask.add_argument("--source", action="append", dest="sources", metavar="NAME",
                     help="answer only from articles of this source; repeat for several")
    ask.add_argument("--from", dest="published_from", metavar="YYYY-MM-DD", help="only articles published on or after")
    ask.add_argument("--to", dest="published_to", metavar="YYYY-MM-DD", help="only articles published on or before")
    ask.add_argument("--doc", action="append", dest="doc_ids", metavar="DOC_ID",
                     help="answer only from this article; repeat for several")

    serve = commands.add_parser("serve", help="start the HTTP API and the chat page")
    _common(serve)
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--workers", type=int, metavar="N",
                       help="server processes sharing the port and following the live index version (QA_WORKERS, default 1)")

    stats = commands.add_parser("stats", help="show what the index holds")
    _common(stats)

    # These two take their own flags; see `qa eval --help` and `qa bench --help`.
    commands.add_parser("eval", help="measure retrieval and answer quality on the benchmarks", add_help=False)
    commands.add_parser("bench", help="measure speed and memory", add_help=False)
    commands.add_parser("train-reader", help="fine-tune, export and describe the reader model", add_help=False)
    commands.add_parser("tune-reader", help="fit the reader's threshold and shortlist on held-out training articles",
                        add_help=False)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    flags = {key: getattr(args, key, None) for key in ("docs_dir", "index_dir", "model", "backend", "top_k", "host", "port", "workers", "ray_address")}
    return resolve(flags)


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def _report(report: Any) -> str:
    if report.version is None:
        text = f"index is up to date: {report.documents} articles, {report.passages} passages"
    else:
        text = (f"indexed {report.documents} articles, {report.passages} passages in {report.seconds:.1f}s "
                f"(embedded {len(report.embedded_documents)}, removed {len(report.removed_documents)})")
    if report.skipped:
        text += "; skipped " + ", ".join(f"{name} ({why})" for name, why in report.skipped.items())
    return text


def _print_result(result: Any) -> None:
    if result.resolved and result.resolved != result.question:
        print(f"Searched for: {result.resolved}\n")
    if result.answer is not None:
        found = result.answer
        rank = result.passages[found.passage].rank
        if found.words is not None:
            print(f"Answer: {found.words}  [{rank}]\n    {found.text}\n")
        else:
            print(f"Answer: {found.text}  [{rank}]\n")
    else:
        print("Nothing in the articles clearly answers this. Closest passages:\n")
    for p in result.passages:
        cite = ", ".join(x for x in (p.title, p.source, p.published) if x)
        print(f"[{p.rank}] {cite}  ({p.doc_id}, chars {p.start}-{p.end})")
        print("    " + p.text.replace("\n\n", "\n    ") + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; 0 on success, 1 on an error the assistant reports, 2 on a wrong command line."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (`qa stats | head -1`): what it read is all it wanted, so not an error. Point
        # stdout at /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        make_parser().print_help(sys.stderr)
        return 2
    if argv[:1] == ["eval"]:
        from .evaluation import main as evaluate

        return evaluate(argv[1:])
    if argv[:1] == ["bench"]:
        from .benchmark import main as benchmark

        return benchmark(argv[1:])
    if argv[:1] == ["train-reader"]:
        from .training.cli import main as train_reader

        return train_reader(argv[1:])
    if argv[:1] == ["tune-reader"]:
        from .training.tune import main as tune_reader

        return tune_reader(argv[1:])
    args = make_parser().parse_args(argv)
    try:
        settings = _settings(args)
        if args.command == "serve":
            if settings.workers > 1:
                from .workers import serve as serve_workers

                serve_workers(settings)
                return 0
            from .api import serve

            serve(settings)
            return 0
        if args.command == "index" and settings.ray_address:
            from .ray_build import build as build_on_ray

            print(_report(build_on_ray(settings, full=args.full, log=_log)))
            return 0
        from .assistant import Assistant

        assistant = Assistant(settings)
        if args.command == "index":
            print(_report(assistant.build(full=args.full, progress=sys.stderr.isatty(), log=_log)))
        elif args.command == "add":
            print(_report(assistant.add_paths(args.paths, progress=sys.stderr.isatty(), log=_log)))
        elif args.command == "remove":
            print(_report(assistant.remove(args.doc_id, log=_log)))
        elif args.command == "ask":
            assistant.load()
            filters = {key: getattr(args, key) for key in ("sources", "published_from", "published_to", "doc_ids")
                       if getattr(args, key) is not None}
            result = assistant.ask(args.question, settings.top_k, args.mode, history=args.history,
                                   filters=filters or None)
            if args.json:
                from .serialize import result_json

                print(json.dumps(result_json(result), ensure_ascii=False, indent=2))
            else:
                _print_result(result)
        elif args.command == "stats":
            assistant.load()
            print(json.dumps(assistant.stats(), indent=2))
        sys.stdout.flush()  # a closed pipe is met here, inside the BrokenPipeError handler, not at exit
    except QAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; the previous index is still in place", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
