"""Shared fixtures: a temporary articles folder and index, with the fake embedder by default."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from qa.assistant import Assistant
from qa.config import Settings, resolve

REPO = Path(__file__).resolve().parent.parent
# The five seed articles the tests were written for, pinned here and checked by hash: what a user adds
# to (or changes in) the repository's seeds/ folder never changes what the tests see.
SEEDS = REPO / "tests" / "seeds"
SEED_HASHES = {
    "000_53675505a120e109.txt": "e16780f197cdcd606bf539eac30bd98944e7d9f9488524c7afcb1860dcbfd468",
    "001_75d156586012b08a.txt": "0461be7eb4cd9bc9e3baf8c352cd73c2100bd3a2a068279f7514cdb52b5a9713",
    "002_7e9bf9ad3c619b7e.txt": "b1c81c19530e263b6f55e09ebdb67011e5398888feeebef55d633a33b65f89aa",
    "003_a706da511b167a58.txt": "d19c469ac8acf3d38837f7ab4206921e648a32014119646f19c54474676f492f",
    "004_c96e7aec04f74565.txt": "af2cc4c6d771eec42266ed2a97f2fa258ea08a92f90ed80bba319ce0aaffc60d",
}


def seed_problems(folder: Path = SEEDS) -> list[str]:
    """How a folder differs from the pinned seed articles: missing, changed or extra files."""
    found = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in folder.iterdir() if path.is_file()}
    problems = [f"{name} is missing" for name in SEED_HASHES if name not in found]
    problems += [f"{name} has changed" for name in SEED_HASHES if name in found and found[name] != SEED_HASHES[name]]
    return problems + [f"{name} is not a pinned seed" for name in found if name not in SEED_HASHES]


def pytest_sessionstart(session: pytest.Session) -> None:
    problems = seed_problems()
    if problems:
        raise pytest.UsageError(f"the pinned seed articles in {SEEDS} are not as the tests expect: {'; '.join(problems)}")


def make_settings(docs: Path, index: Path, **overrides: object) -> Settings:
    """Settings for a test: never read from the caller's QA_* environment."""
    # The fast tests check the sentence scorer's answers exactly; the reader has tests of its own.
    flags = {"docs_dir": docs, "index_dir": index, "model": "fake-256", "reader": "off", **overrides}
    return resolve(flags, env={})


@pytest.fixture
def docs_dir(tmp_path: Path) -> Path:
    """A private copy of the pinned seed articles."""
    target = tmp_path / "docs"
    shutil.copytree(SEEDS, target)
    return target


@pytest.fixture
def settings(docs_dir: Path, tmp_path: Path) -> Settings:
    return make_settings(docs_dir, tmp_path / "index")


@pytest.fixture
def assistant(settings: Settings) -> Assistant:
    """A fake-embedder assistant with the seed articles indexed."""
    helper = Assistant(settings)
    helper.build()
    return helper
