"""The scale-out settings and flags: --workers / QA_WORKERS, --ray / QA_RAY_ADDRESS, and Ray staying optional."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from qa.cli import main
from qa.config import resolve
from qa.errors import ConfigError


def test_workers_and_ray_address_come_from_flags_or_the_environment() -> None:
    assert resolve({}, env={}).workers == 1 and resolve({}, env={}).ray_address is None
    settings = resolve({}, env={"QA_WORKERS": "3", "QA_RAY_ADDRESS": "auto"})
    assert settings.workers == 3 and settings.ray_address == "auto"
    assert resolve({"workers": 2}, env={"QA_WORKERS": "3"}).workers == 2
    with pytest.raises(ConfigError, match="workers"):
        resolve({"workers": 0}, env={})


def test_the_help_names_the_flags_without_importing_ray_or_faiss() -> None:
    code = ("import sys\nfrom qa.cli import make_parser\n"
            "for command in ('index', 'serve'):\n"
            "    try:\n        make_parser().parse_args([command, '--help'])\n    except SystemExit:\n        pass\n"
            "print('heavy:', sorted(m for m in ('ray', 'faiss', 'torch') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--ray ADDRESS" in done.stdout and "--workers N" in done.stdout
    assert "heavy: []" in done.stdout


def test_qa_index_ray_without_ray_installed_says_how_to_install_it(docs_dir: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    status = main(["index", "--ray", "auto", "--docs", str(docs_dir), "--index", str(tmp_path / "index"),
                   "--model", "fake-256"])
    assert status == 1
    assert "pip install 'qa[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "index" / "CURRENT").exists()
