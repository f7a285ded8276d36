"""An add or a remove as one commit: the articles folder and the index change together or not at all.

A change is written down before anything moves. New articles are first written beside their targets
as hidden staged files (`.qa-new-<change>-<name>`), and the journal (`.qa-journal.json` in the articles
folder) lists every file the change adds and removes. Then files to remove are renamed to hidden ones
(`.qa-old-<change>-<name>`), staged files are moved in, the index is updated from the folder, and the
journal is deleted: that deletion is the commit.

- A failure that is not a crash (a build error, an update cancelled at shutdown) puts the folder back
  as it was before the journal goes, and the index keeps its previous version.
- A crash (kill -9, power loss) leaves the journal. `recover`, run by the next build while it holds the
  build lock, finishes the change (moves in what is still staged, deletes what was to be removed), and
  that build then brings the index in line with the folder. Hidden `.qa-` files no journal names are
  from a change that crashed before writing its journal: they are deleted.

The caller holds the index's build lock throughout, so a change never interleaves with another
process's build or change.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import Iterator, Sequence

from .store import fsync_dir

JOURNAL = ".qa-journal.json"
_PREFIX = ".qa-"


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _read_journal(docs_dir: Path) -> dict[str, list[list[str]]] | None:
    """The journal left by an unfinished change; None if there is none, or it was cut short while written."""
    try:
        entry = json.loads((docs_dir / JOURNAL).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        # Written to a temporary name and renamed, so a torn journal means the change never began.
        return None
    if not isinstance(entry, dict):
        return None
    return {key: [pair for pair in entry.get(key, []) if _safe_pair(pair)] for key in ("add", "remove")}


def _safe_pair(pair: object) -> bool:
    """Two plain file names: a journal never reaches outside the articles folder."""
    return (isinstance(pair, list) and len(pair) == 2
            and all(isinstance(name, str) and name and Path(name).name == name and name not in (".", "..")
                    for name in pair))


def _roll_forward(docs_dir: Path, journal: dict[str, list[list[str]]]) -> None:
    """Finish a change: every staged file in place, every removed file gone. Safe to repeat."""
    for target, hidden in journal["remove"]:
        (docs_dir / hidden).unlink(missing_ok=True)
        (docs_dir / target).unlink(missing_ok=True)
    for staged, target in journal["add"]:
        if (docs_dir / staged).exists():
            os.replace(docs_dir / staged, docs_dir / target)


def _roll_back(docs_dir: Path, journal: dict[str, list[list[str]]]) -> None:
    """Undo a change that has not committed: added files gone, removed files back. Safe to repeat."""
    for staged, target in journal["add"]:
        (docs_dir / staged).unlink(missing_ok=True)
        (docs_dir / target).unlink(missing_ok=True)
    for target, hidden in journal["remove"]:
        if (docs_dir / hidden).exists():
            os.replace(docs_dir / hidden, docs_dir / target)


def _end(docs_dir: Path) -> None:
    (docs_dir / JOURNAL).unlink(missing_ok=True)
    fsync_dir(docs_dir)


def recover(docs_dir: Path) -> bool:
    """Finish a change a crash interrupted and delete stray staged files; True if there was a change to finish.

    Call only while holding the build lock, then build: the index catches up with the folder.
    """
    if not docs_dir.is_dir():
        return False
    journal = _read_journal(docs_dir)
    if journal is not None:
        _roll_forward(docs_dir, journal)
    for path in docs_dir.iterdir():
        if path.name.startswith(_PREFIX) and path.name != JOURNAL:
            path.unlink(missing_ok=True)
    if (docs_dir / JOURNAL).exists():
        _end(docs_dir)
    return journal is not None


def pending(docs_dir: Path) -> bool:
    """Whether a change is unfinished (its process is still at work, or crashed)."""
    return (docs_dir / JOURNAL).exists()


@contextlib.contextmanager
def change(docs_dir: Path, add: Sequence[tuple[str, bytes]] = (), remove: Sequence[str] = ()) -> Iterator[None]:
    """Add files to and remove files from the folder, then run the body (the index update) and commit.

    If the body raises, the folder is put back as it was. `add` is (file name, bytes) pairs; `remove`
    file names. The caller has checked the names and holds the build lock.
    """
    docs_dir.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:12]
    journal: dict[str, list[list[str]]] = {
        "add": [[f"{_PREFIX}new-{tag}-{name}", name] for name, _ in add],
        "remove": [[name, f"{_PREFIX}old-{tag}-{name}"] for name in remove],
    }
    try:
        for (staged, _), (_, data) in zip(journal["add"], add):
            _write_synced(docs_dir / staged, data)
        temporary = docs_dir / f"{_PREFIX}journal-{tag}"
        _write_synced(temporary, json.dumps(journal).encode())
        os.replace(temporary, docs_dir / JOURNAL)
        fsync_dir(docs_dir)
        # From here a crash finishes the change at the next start.
        for target, hidden in journal["remove"]:
            os.replace(docs_dir / target, docs_dir / hidden)
        for staged, target in journal["add"]:
            os.replace(docs_dir / staged, docs_dir / target)
        fsync_dir(docs_dir)
        yield
    except BaseException:
        _roll_back(docs_dir, journal)
        (docs_dir / f"{_PREFIX}journal-{tag}").unlink(missing_ok=True)
        _end(docs_dir)
        raise
    # Committed: the index holds the change. Deleting the journal first means a crash now leaves the
    # removed files as hidden strays, which the next recover deletes, never restores.
    _end(docs_dir)
    for _, hidden in journal["remove"]:
        (docs_dir / hidden).unlink(missing_ok=True)
