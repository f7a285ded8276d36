"""Notice articles dropped into or deleted from the folder while the server runs.

One thread watches the articles folder with watchfiles (inotify on Linux) and calls `on_change` when an
article or sidecar was created, changed or deleted; the server then queues a sync, an incremental
build that embeds only what changed. Hidden files (staged articles and the change journal, see
changes.py) are their writers' business and are ignored. Versions other processes make live are
followed through the index's CURRENT pointer instead (workers.VersionFollower).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Callable

from .documents import META_SUFFIX, SUFFIXES

log = logging.getLogger("qa.watch")


class Watcher:
    """A background thread following one articles folder."""

    def __init__(self, docs_dir: Path, on_change: Callable[[], Any], *, debounce_ms: int = 400) -> None:
        self.docs_dir = docs_dir.resolve()
        self.on_change = on_change
        self.debounce_ms = debounce_ms
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="qa-watch", daemon=True)

    def start(self) -> Watcher:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def is_article(self, path: Path) -> bool:
        """An article or sidecar in the folder itself, not a hidden file."""
        name = path.name
        return (path.parent == self.docs_dir and not name.startswith(".")
                and (name.endswith(META_SUFFIX) or path.suffix.lower() in SUFFIXES))

    def _wanted(self, change: Any, path: str) -> bool:
        return self.is_article(Path(path))

    def _run(self) -> None:
        from watchfiles import watch

        if not self.docs_dir.is_dir():
            log.warning("%s does not exist: not watching it for new articles", self.docs_dir)
            return
        try:
            for _ in watch(self.docs_dir, watch_filter=self._wanted, debounce=self.debounce_ms,
                           stop_event=self._stop, recursive=False):
                try:
                    self.on_change()
                except Exception:
                    log.exception("the articles folder changed, but queueing a sync failed")
        except Exception:
            log.exception("stopped watching %s for changes", self.docs_dir)
