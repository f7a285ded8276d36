"""One article added to a copy of a built index, twice: seconds and the process's peak memory.

    python bench/incremental_add.py --docs bench/.cache/ray-build/docs --index bench/.cache/ray-build/local-index

The folders are copied to a temporary place first (the originals are not touched); the copy is loaded as a
server loads it, then two short articles are added one after the other through Assistant.add_paths, as
`qa add` or an upload does. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=Path, required=True, help="the articles folder the index was built from")
    parser.add_argument("--index", type=Path, required=True, help="the index folder")
    args = parser.parse_args(argv)

    from qa.assistant import Assistant
    from qa.config import resolve

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copytree(args.docs, root / "docs")
        shutil.copytree(args.index, root / "index")
        assistant = Assistant(resolve({"docs_dir": root / "docs", "index_dir": root / "index"}))
        assistant.load()
        for number in range(2):
            article = root / f"ferry-{number}.txt"
            article.write_text(f"Night ferry {number} resumes\n\nThe overnight ferry number {number} to the northern "
                               "islands sails again on Friday, the harbour office said.\n", encoding="utf-8")
            started = time.perf_counter()
            report = assistant.add_paths([article])
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"add {number + 1}: {time.perf_counter() - started:.2f} s, {report.documents:,} articles, "
                  f"{report.passages:,} passages, peak RSS so far {peak:,.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
