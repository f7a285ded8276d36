"""Shared fixtures: a temporary articles folder and index, with the fake embedder by default."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from qa.assistant import Assistant
from qa.config import Settings, resolve

REPO = Path(__file__).resolve().parent.parent
SEEDS = REPO / "seeds"


def make_settings(docs: Path, index: Path, **overrides: object) -> Settings:
    """Settings for a test: never read from the caller's QA_* environment."""
    flags = {"docs_dir": docs, "index_dir": index, "model": "fake-256", **overrides}
    return resolve(flags, env={})


@pytest.fixture
def docs_dir(tmp_path: Path) -> Path:
    """A private copy of the seed articles."""
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
