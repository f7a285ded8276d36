"""Crash safety: kill -9 during rebuilds, and damaged index files detected, never crashing or misleading.

The kill test builds a generated corpus with `python -m qa.cli index --full` in a real process,
measures how long a build takes, then kills rebuilds at uniformly random moments within that
time (stratified, so every part of the build is hit). After each kill the index must load with
its checksums verified and answer exactly as before. Set QA_CRASH_SEED to replay a run.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from fastapi.testclient import TestClient

from qa import cli, store
from qa.api import create_app
from qa.assistant import Assistant
from qa.config import Settings
from qa.errors import IndexCorrupt, IndexError_, IndexMissing

from .conftest import make_settings
from .test_index import NEW_ARTICLE
from .test_reliability import error_problem, qa_env, report, tree_digest

KILLS = 24
ARTICLES = 200
QUESTIONS = [("hybrid", 0), ("dense", 1), ("lexical", 2), ("hybrid", 3), ("hybrid", None)]
REBUILD_HINT = "qa index"


def generate_corpus(folder: Path, articles: int, seed: int = 20240601) -> list[str]:
    """Deterministic made-up articles; returns one question taken from each of a few of them."""
    rng = random.Random(seed)
    consonants, vowels = "bcdfghjklmnprstvwz", "aeiou"
    words = ["".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(rng.randint(1, 4))) for _ in range(4000)]
    folder.mkdir(parents=True)
    questions = []
    for number in range(articles):
        paragraphs = []
        for _ in range(rng.randint(3, 7)):
            sentences = []
            for _ in range(rng.randint(2, 6)):
                chosen = rng.choices(words, k=rng.randint(6, 20))
                sentences.append(chosen[0].capitalize() + " " + " ".join(chosen[1:]) + ".")
            paragraphs.append(" ".join(sentences))
        if number % 50 == 7:
            questions.append(" ".join(paragraphs[1].split()[2:9]) + "?")
        title = " ".join(rng.choices(words, k=6)).title()
        (folder / f"article_{number:04d}.txt").write_text(title + "\n\n" + "\n\n".join(paragraphs) + "\n")
    return questions


def answers(settings: Settings, questions: list[str]) -> list[tuple]:
    """Load the live index (checksums verified) with a fresh assistant and answer every question."""
    helper = Assistant(settings)
    helper.load()
    results = []
    for mode, which in QUESTIONS:
        question = questions[which] if which is not None else "zzzz qqqq nothing matches this"
        result = helper.ask(question, 8, mode)  # type: ignore[arg-type]
        found = result.answer
        results.append(((found.text, found.start, found.end, found.passage) if found else None,
                        [(p.doc_id, p.start, p.end, p.score, p.text) for p in result.passages]))
    return results


def index_command(settings: Settings) -> tuple[list[str], dict[str, str]]:
    return [sys.executable, "-m", "qa.cli", "index", "--full"], qa_env(settings.docs_dir, settings.index_dir)


def complete_build(settings: Settings) -> float:
    argv, env = index_command(settings)
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return time.perf_counter() - started


def test_kill_9_during_rebuilds_never_breaks_the_index(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings(tmp_path / "docs", tmp_path / "index")
    questions = generate_corpus(settings.docs_dir, ARTICLES)
    docs_before = tree_digest(settings.docs_dir)

    first = complete_build(settings)
    baseline_version = store.current_version(settings.index_dir)
    expected = answers(settings, questions)
    assert any(passages for _, passages in expected)
    # A second full build of unchanged articles must hold the same content, so that a kill after
    # the swap may leave either version live and both answer the same.
    second = complete_build(settings)
    assert store.current_version(settings.index_dir) != baseline_version
    assert answers(settings, questions) == expected
    duration = min(first, second)

    seed = int(os.environ.get("QA_CRASH_SEED") or time.time_ns() % 1_000_000)
    rng = random.Random(seed)
    # Stratified: one uniform moment in each of KILLS equal slices of the build, in random order.
    delays = [duration * (slot + rng.random()) / KILLS for slot in range(KILLS)]
    rng.shuffle(delays)
    argv, env = index_command(settings)
    outcomes = {"before_swap": 0, "after_swap": 0, "finished_first": 0}
    kills: list[dict[str, Any]] = []
    problems: list[str] = []
    while len(kills) < KILLS:
        delay = delays.pop() if delays else rng.uniform(0, duration)
        live_before = store.current_version(settings.index_dir)
        process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            process.wait(timeout=delay)
            outcomes["finished_first"] += 1  # too late to kill; try again with another moment
            assert process.returncode == 0
            if outcomes["finished_first"] > 3 * KILLS:
                pytest.fail("the builds keep finishing before the kill; the measured duration is wrong")
            continue
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            if process.returncode == 0:  # it finished just before the signal landed
                outcomes["finished_first"] += 1
                continue
        live = store.current_version(settings.index_dir)
        swapped = live != live_before
        outcomes["after_swap" if swapped else "before_swap"] += 1
        kills.append({"delay": round(delay, 3), "swapped": swapped, "returncode": process.returncode})
        try:
            got = answers(settings, questions)
        except Exception as exc:  # any failure to load is a broken index
            problems.append(f"kill at {delay:.3f}s ({'after' if swapped else 'before'} the swap): {type(exc).__name__}: {exc}")
            continue
        if got != expected:
            problems.append(f"kill at {delay:.3f}s: answers differ from the previous index")
    figures = {"seed": seed, "kills": len(kills), **outcomes, "build_seconds": round(duration, 2),
               "articles": ARTICLES, "problems": len(problems)}
    report(capsys, "crash-kills", figures)
    assert not problems, f"seed {seed}:\n" + "\n".join(problems)

    # The next ordinary build clears what the killed ones left behind, and finds nothing to redo.
    report_after = Assistant(settings).build()
    assert report_after.version is None, "an incremental build after the kills should find the index up to date"
    assert not list(settings.index_dir.glob(".tmp-*")) and not list(settings.index_dir.glob(f".{store.CURRENT}.*"))
    complete_build(settings)
    assert len([p for p in settings.index_dir.glob("v-*") if p.is_dir()]) <= 2
    assert answers(settings, questions) == expected
    assert tree_digest(settings.docs_dir) == docs_before


# --- damaged index files ------------------------------------------------------------------------


@pytest.fixture
def pristine(assistant: Assistant, tmp_path: Path) -> Iterator[tuple[Settings, Path, list[tuple]]]:
    """A built index, a copy to restore it from, and its answers."""
    settings = assistant.settings
    copy = tmp_path / "pristine-index"
    shutil.copytree(settings.index_dir, copy)
    yield settings, copy, answers(settings, ["Hetao cooperation zone area", "Corerain chips", "CU Datahub insurance",
                                             "lighthouse keepers"])


def _restore(settings: Settings, copy: Path) -> Path:
    shutil.rmtree(settings.index_dir)
    shutil.copytree(copy, settings.index_dir)
    return settings.index_dir / store.current_version(settings.index_dir)


def _damages(data: bytes, rng: random.Random, random_bits: bool) -> Iterator[tuple[str, bytes | None]]:
    yield "emptied", b""
    yield "cut in half", data[: len(data) // 2]
    yield "last byte cut", data[:-1]
    yield "a byte appended", data + b"\0"
    yield "missing", None
    for name, at in (("first", 0), ("middle", len(data) // 2), ("last", len(data) - 1)):
        damaged = bytearray(data)
        damaged[at] ^= 0xFF
        yield f"{name} byte flipped", bytes(damaged)
    for _ in range(6 if random_bits else 0):
        damaged = bytearray(data)
        at, bit = rng.randrange(len(data)), rng.randrange(8)
        damaged[at] ^= 1 << bit
        yield f"bit {bit} of byte {at} flipped", bytes(damaged)
    zeroed = bytearray(data)
    start = rng.randrange(len(data))
    zeroed[start:start + 4096] = bytes(len(zeroed[start:start + 4096]))
    yield f"4 KiB zeroed at {start}", bytes(zeroed)


def test_every_damaged_index_file_is_detected_with_how_to_rebuild(pristine: tuple[Settings, Path, list[tuple]],
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    settings, copy, _ = pristine
    rng = random.Random(7)
    problems, tried = [], 0
    for filename in (*store.FILES, store.MANIFEST):
        data = (settings.index_dir / store.current_version(settings.index_dir) / filename).read_bytes()
        # Any flipped bit of a checksummed file must be caught; the manifest's own random flips are
        # the next test's business (some, such as one in built_at, are harmless).
        for label, damaged in _damages(data, rng, random_bits=filename != store.MANIFEST):
            folder = _restore(settings, copy)
            if damaged is None:
                (folder / filename).unlink()
            else:
                (folder / filename).write_bytes(damaged)
            tried += 1
            try:
                Assistant(settings).load()
                problems.append(f"{filename} {label}: loaded without complaint")
            except IndexCorrupt as exc:
                if "qa index --full" not in str(exc):
                    problems.append(f"{filename} {label}: no rebuild hint in {exc}")
            except Exception as exc:
                problems.append(f"{filename} {label}: {type(exc).__name__}: {exc}")
    report(capsys, "crash-damaged-files", {"damaged_files_tried": tried, "problems": len(problems)})
    assert not problems, "\n".join(problems)


def test_random_damage_to_the_manifest_never_misleads(pristine: tuple[Settings, Path, list[tuple]]) -> None:
    """The manifest holds the checksums: a flipped bit is refused with a hint, or is harmless."""
    settings, copy, expected = pristine
    rng = random.Random(11)
    original = (copy / store.current_version(copy) / store.MANIFEST).read_bytes()
    loaded = 0
    for _ in range(60):
        folder = _restore(settings, copy)
        damaged = bytearray(original)
        damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
        (folder / store.MANIFEST).write_bytes(bytes(damaged))
        try:
            got = answers(settings, ["Hetao cooperation zone area", "Corerain chips", "CU Datahub insurance",
                                     "lighthouse keepers"])
        except IndexError_ as exc:
            assert REBUILD_HINT in str(exc), exc
            continue
        loaded += 1
        assert got == expected, "a damaged manifest changed the answers"
    assert loaded < 60


def test_a_damaged_current_pointer_is_reported_not_crashed(pristine: tuple[Settings, Path, list[tuple]],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    settings, copy, _ = pristine
    name = store.current_version(copy).encode()
    variants: list[tuple[str, bytes]] = [("empty", b""), ("newline", b"\n"), ("garbage", b"\x00\xff\xfe garbage"),
                                         ("not UTF-8", b"\xc3\x28" + name), ("traversal", b"../../etc"),
                                         ("a missing version", b"v-19700101T000000000000-deadbeef"), ("cut", name[:-3])]
    for at in range(len(name)):
        for bit in range(8):
            damaged = bytearray(name)
            damaged[at] ^= 1 << bit
            variants.append((f"bit {bit} of byte {at}", bytes(damaged)))
    problems = []
    for label, content in variants:
        _restore(settings, copy)
        (settings.index_dir / store.CURRENT).write_bytes(content)
        try:
            Assistant(settings).load()
            problems.append(f"{label}: loaded")
        except (IndexCorrupt, IndexMissing) as exc:
            if REBUILD_HINT not in str(exc):
                problems.append(f"{label}: no rebuild hint in {exc}")
        except Exception as exc:
            problems.append(f"{label} ({content!r}): {type(exc).__name__}: {exc}")
    report(capsys, "crash-damaged-pointer", {"pointer_damages_tried": len(variants), "problems": len(problems)})
    assert not problems, f"{len(problems)} of {len(variants)} damaged CURRENT files were not reported:\n" + "\n".join(problems[:20])


def test_a_damaged_index_is_reported_by_the_cli_and_healed_by_qa_index(
        pristine: tuple[Settings, Path, list[tuple]], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    settings, copy, expected = pristine
    folder = _restore(settings, copy)
    (folder / "passages.npy").write_bytes((folder / "passages.npy").read_bytes()[:-10])
    for key in [k for k in os.environ if k.startswith("QA_")]:
        monkeypatch.delenv(key)
    for key, value in qa_env(settings.docs_dir, settings.index_dir).items():
        if key.startswith("QA_"):
            monkeypatch.setenv(key, value)
    for argv in (["ask", "Hetao cooperation zone area"], ["ask", "Hetao", "--json"], ["stats"]):
        code = cli.main(argv)
        out, err = capsys.readouterr()
        assert code == 1 and not out, argv
        assert err.startswith("error: ") and err.count("\n") == 1 and "qa index --full" in err, err
    # An ordinary `qa index` notices the damage and rebuilds from the articles.
    assert cli.main(["index"]) == 0
    out, err = capsys.readouterr()
    assert "rebuilding from scratch" in err and "indexed 5 articles" in out
    assert answers(settings, ["Hetao cooperation zone area", "Corerain chips", "CU Datahub insurance",
                              "lighthouse keepers"]) == expected


def test_the_api_never_serves_a_damaged_index(pristine: tuple[Settings, Path, list[tuple]]) -> None:
    settings, copy, _ = pristine
    folder = _restore(settings, copy)
    # A server whose index is damaged on disk before it could load: 503 with a JSON error, not 500.
    (folder / "dense.faiss").write_bytes(b"\0" * 64)
    unloaded = Assistant(settings)
    with pytest.raises(IndexCorrupt, match="qa index --full"):
        unloaded.load()
    with TestClient(create_app(unloaded), raise_server_exceptions=False) as client:
        for response in (client.post("/ask", json={"question": "Hetao"}), client.get("/ask", params={"q": "Hetao"}),
                         client.get("/documents"), client.get("/documents/001_75d156586012b08a")):
            assert response.status_code == 503 and error_problem(response, range(503, 504)) is None, response.text
            assert REBUILD_HINT in response.json()["error"]["message"]
        assert client.get("/health").json()["loaded"] is False

    # A running server whose files are damaged under it keeps answering from memory, and the next
    # update rebuilds from the articles instead of trusting the damaged files.
    folder = _restore(settings, copy)
    live = Assistant(settings)
    live.load()
    with TestClient(create_app(live), raise_server_exceptions=False) as client:
        before = client.post("/ask", json={"question": "Hetao cooperation zone area"}).json()
        (folder / "vectors.npy").write_bytes((folder / "vectors.npy").read_bytes()[:200])
        again = client.post("/ask", json={"question": "Hetao cooperation zone area"}).json()
        assert again["passages"] == before["passages"]
        response = client.post("/documents", files=[("files", ("lighthouse.txt", NEW_ARTICLE.encode(), "text/plain"))])
        assert response.status_code == 202
        deadline = time.monotonic() + 60
        while (job := client.get(f"/jobs/{response.json()['job_id']}").json())["status"] not in ("done", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert job["status"] == "done", job
        hit = client.post("/ask", json={"question": "Who will live in the restored cottage beside the lighthouse?"}).json()
        assert hit["passages"][0]["doc_id"] == "lighthouse"
        assert client.post("/ask", json={"question": "Hetao cooperation zone area"}).json()["passages"][0]["doc_id"] == \
            before["passages"][0]["doc_id"]
    Assistant(settings).load()  # what is on disk now is whole again
