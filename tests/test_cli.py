"""The `qa` command line: flags over environment over defaults, one-line errors, JSON output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qa import cli
from qa.config import Settings, resolve
from qa.errors import ConfigError

from .test_index import NEW_ARTICLE


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, docs_dir: Path, tmp_path: Path) -> Path:
    """Point the CLI at private folders through the environment, with the fake embedder."""
    monkeypatch.setenv("QA_DOCS_DIR", str(docs_dir))
    monkeypatch.setenv("QA_INDEX_DIR", str(tmp_path / "index"))
    monkeypatch.setenv("QA_MODEL", "fake-256")
    monkeypatch.setenv("QA_READER", "off")
    return tmp_path


def test_resolution_order() -> None:
    env = {"QA_TOP_K": "7", "QA_INDEX_DIR": "/x/idx", "QA_HYBRID": "false"}
    settings = resolve({"top_k": 3}, env=env)
    assert (settings.top_k, settings.index_dir, settings.hybrid) == (3, Path("/x/idx"), False)
    defaults = resolve({}, env={})
    assert defaults == Settings()
    with pytest.raises(ConfigError, match="QA_TOP_K"):
        resolve({}, env={"QA_TOP_K": "many"})
    with pytest.raises(ConfigError, match="top_k"):
        resolve({"top_k": 0}, env={})


def test_index_ask_add_flow(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "index")
    assert code == 0 and "indexed 5 articles" in out
    code, out, _ = run(capsys, "index")
    assert code == 0 and "up to date" in out
    code, out, _ = run(capsys, "ask", "square kilometers area Hetao zone", "--json", "--top-k", "2")
    body = json.loads(out)
    assert code == 0 and len(body["passages"]) == 2
    for passage in body["passages"]:
        assert {"doc_id", "title", "source", "published", "start", "end", "score", "text"} <= set(passage)
    article = env / "lighthouse.txt"
    article.write_text(NEW_ARTICLE)
    code, out, _ = run(capsys, "add", str(article))
    assert code == 0 and "embedded 1" in out
    code, out, _ = run(capsys, "ask", "keepers cottage lighthouse tower")
    first = next(line for line in out.splitlines() if line.startswith("[1] "))
    assert code == 0 and "(lighthouse," in first
    code, out, _ = run(capsys, "remove", "lighthouse")
    assert code == 0 and "removed 1" in out


def test_flags_beat_environment(env: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    other = tmp_path / "other-index"
    assert run(capsys, "index", "--index", str(other))[0] == 0
    assert (other / "CURRENT").is_file() and not (tmp_path / "index").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["ask", "anything"], "qa index"), (["ask", "", "--top-k", "3"], "empty"),
     (["ask", "x", "--top-k", "99"], "top_k"), (["add", "/nonexistent/file.txt"], "not a file"),
     (["remove", "nope"], "no article"), (["index", "--docs", "/nonexistent"], "does not exist")],
)
def test_errors_are_one_line(env: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    if argv[0] in ("remove",) or argv[1:2] == [""]:
        run(capsys, "index")
    code, out, err = run(capsys, *argv)
    assert code == 1
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_help_is_fast_and_imports_nothing_heavy() -> None:
    code = ("import sys, qa.cli; qa.cli.make_parser(); "
            "print(any(m in sys.modules for m in ('torch', 'faiss', 'sentence_transformers', 'fastapi')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert out.stdout.strip() == "False"
