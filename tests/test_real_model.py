"""The packaged all-MiniLM-L6-v2 on the seed articles: real questions find their articles."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qa.assistant import Assistant

from .conftest import SEEDS, make_settings

pytestmark = pytest.mark.model

# (question, article that answers it, words the cited passage must contain)
QUESTIONS = [
    ("What is the total area of the Hetao cooperation zone?", "001_75d156586012b08a", "3.89 square kilometers"),
    # Shares no rare word with its answer; sentence vectors pooled in context (which halve the
    # embedding work of a build) no longer carry it into the top 3: a known loss, see bench/RESULTS.md.
    pytest.param("How large is the whole Hetao zone?", "001_75d156586012b08a", "3.89 square kilometers",
                 marks=pytest.mark.xfail(reason="paraphrase lost with in-context sentence vectors", strict=False)),
    ("Who is the mayor of Shenzhen?", "003_a706da511b167a58", "Qin Weizhong"),
    ("How many researchers has the Shenzhen park attracted?", "003_a706da511b167a58", "3,000 researchers"),
    ("Which company used its data intellectual property as collateral for a bank loan?", "000_53675505a120e109", "1-million-yuan"),
    ("How many dual-appointed professors does the HKUST institute at Hetao have?", "000_53675505a120e109", "100 dual-appointed"),
    ("Why will the Hong Kong part of the zone not be ready until 2024?", "004_c96e7aec04f74565", "land rehabilitation"),
    ("What does the startup Add Care develop?", "004_c96e7aec04f74565", "blood glucose"),
    ("When did Xi Jinping first propose the border park?", "002_7e9bf9ad3c619b7e", "2017"),
    ("Which official from Hong Kong flew to Beijing for the press conference?", "002_7e9bf9ad3c619b7e", "Eric Chan"),
    ("How long does it take to travel from City University of Hong Kong to the park?", "001_75d156586012b08a", "forty-minute"),
    ("What fields will the Shenzhen park focus on for new growth?", "003_a706da511b167a58", "biomedicine"),
    ("By what year should a free and orderly cross-border flow of innovation factors take shape?", "001_75d156586012b08a", "2035"),
]


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Assistant:
    root = tmp_path_factory.mktemp("real")
    shutil.copytree(SEEDS, root / "docs")
    assistant = Assistant(make_settings(root / "docs", root / "index", model=None))
    assistant.build()
    return assistant


@pytest.mark.parametrize(("question", "doc_id", "words"), QUESTIONS)
def test_question_finds_its_article_in_top_3(real: Assistant, question: str, doc_id: str, words: str) -> None:
    passages = real.ask(question, top_k=3).passages
    assert any(p.doc_id == doc_id and words in p.text for p in passages), [(p.doc_id, p.text[:60]) for p in passages]


def test_area_question_cites_the_exact_passage_first(real: Assistant) -> None:
    first = real.ask("What is the total area of the Hetao cooperation zone?").passages[0]
    assert first.doc_id == "001_75d156586012b08a" and "3.89 square kilometers" in first.text
    text = real.document(first.doc_id)[0].text
    assert text[first.start:first.end] == first.text


def test_cli_json_end_to_end(real: Assistant) -> None:
    """`qa ask --json` in a fresh process, against the index the fixture built."""
    env = {**os.environ, "QA_DOCS_DIR": str(real.settings.docs_dir), "QA_INDEX_DIR": str(real.settings.index_dir)}
    env.pop("QA_MODEL", None)
    out = subprocess.run(
        [sys.executable, "-m", "qa.cli", "ask", "What is the total area of the Hetao cooperation zone?", "--json"],
        capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parent.parent, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    first = body["passages"][0]
    assert first["doc_id"] == "001_75d156586012b08a" and "3.89 square kilometers" in first["text"]
    for passage in body["passages"]:
        assert {"doc_id", "title", "source", "published", "start", "end", "score", "text"} <= set(passage)
