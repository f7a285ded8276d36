"""`qa serve --workers N`: several server processes over one index folder, each following its CURRENT pointer.

The supervisor (the process `qa serve` starts in) never loads the model: a first child process builds
the index if there is none, then the supervisor reserves the port and starts N worker processes, each
listening on it with SO_REUSEPORT, so the kernel spreads new connections over them evenly. (With one
socket shared by all, the worker whose event loop wakes first accepts every waiting connection: eight
clients that connect at once all land on one worker.) Every worker, like a
single `qa serve`, polls the index's CURRENT pointer: when another process (`qa index`, `qa add`, or
another worker's POST /documents) has made a new version live, the worker loads that version whole,
checksums included, and swaps it in between two questions. A version is only named in CURRENT once
all its files are written (see store.write), so no worker ever serves a half-built one.

Each worker has its own answer cache and its own queue of index jobs; a POST /documents goes to one
worker, which builds the new version, and the others pick it up from CURRENT (builds in different
processes take the index folder's build lock in turn). The first worker alone watches the articles
folder, so a file dropped there is indexed once. Every worker writes its jobs' states into one
temporary folder and reads the others' from it, so GET /jobs/{id} answers on whichever worker a
client's connection reaches.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .config import Settings
from .errors import IndexError_, QAError

log = logging.getLogger("qa.workers")
# How often each process reads CURRENT: a one-line file, so four reads a second cost nothing, and a new
# version is served within about a quarter of a second plus its load time.
FOLLOW_SECONDS = 0.25
# A worker that dies sooner than this after it started is not restarted: it would only die again.
MIN_UPTIME = 10.0
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


class VersionFollower:
    """A daemon thread that swaps in the index version named by CURRENT whenever another process changes it."""

    def __init__(self, assistant: Any, interval: float = FOLLOW_SECONDS) -> None:
        self.assistant = assistant
        self.interval = interval
        self._stop = threading.Event()
        self._failed: str | None = None  # the version last refused, reported once rather than every poll
        self._serving: str | None = assistant.stats()["version"]  # the version last logged as served
        self._thread = threading.Thread(target=self._run, name="qa-follow", daemon=True)

    def start(self) -> VersionFollower:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        """One look at CURRENT; errors are logged, and the version in memory keeps answering."""
        try:
            if self.assistant.follow():
                self._failed = None
        except QAError as exc:
            # A version pruned between reading CURRENT and loading it, or one built by another model:
            # keep answering from the version in memory, and say so once.
            message = str(exc)
            if message != self._failed:
                log.warning("not following the live index version: %s", message)
                self._failed = message
        except Exception:  # a worker must not lose its follower to a surprise
            log.exception("could not follow the live index version")
        # Logged whoever swapped it in (this thread, or a build or folder sync in this process).
        version = self.assistant.stats()["version"]
        if version != self._serving:
            log.info("now serving index version %s", version)
            self._serving = version


# --- the supervisor ------------------------------------------------------------------------------


def _prepare(settings: Settings, errors: Any) -> None:
    """Child process: build the index if there is none (or it must be rebuilt), then exit."""
    from .api import limit_threads
    from .assistant import Assistant

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    limit_threads()
    try:
        report = Assistant(settings).ensure_index(log=log.info)
        if report is not None:
            log.info("built index: %d articles, %d passages in %.1fs", report.documents, report.passages,
                     report.seconds)
    except QAError as exc:
        errors.send(str(exc))
        raise SystemExit(1) from None
    errors.send(None)


def _worker(settings: Settings, watch: bool, jobs: Path) -> None:
    """Child process: one server answering on its own socket of the shared port, and following CURRENT.

    `watch`: this worker also syncs the index with the articles folder when files change there (one
    worker does, so a change is indexed once; the others follow the version it makes live).
    """
    import uvicorn

    from .api import create_app, limit_threads, server_options
    from .assistant import Assistant

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    limit_threads()
    assistant = Assistant(settings)
    # N processes each reading with every core would make 2N threads fight over the cores for each
    # question; each takes its share instead.
    assistant.reader_threads = reader_share(settings.workers)
    assistant.load()
    assistant.warm_up()
    VersionFollower(assistant).start()
    log.info("worker serving index version %s", assistant.stats()["version"])
    listener = bind(settings.host, settings.port)
    listener.listen(2048)
    config = uvicorn.Config(create_app(assistant, watch=watch, shared_jobs=jobs), log_level="info", **server_options())
    uvicorn.Server(config).run(sockets=[listener])


def reader_share(workers: int) -> int:
    """The reader threads of one of `workers` processes on this machine's cores (at least one)."""
    return max(1, len(os.sched_getaffinity(0)) // max(1, workers))


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port that other sockets of this user may bind too (SO_REUSEPORT)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    # IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say they are TCP, and
    # with Nagle on, a response written in two parts waits for the client's delayed ACK (40 ms).
    bound = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    bound.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    bound.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        bound.bind((host, port))
    except OSError as exc:
        bound.close()
        raise QAError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from None
    return bound


def serve(settings: Settings) -> None:
    """`qa serve --workers N`: prepare the index, bind once, run N workers until interrupted."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    from .security import exposure_notice

    for line in exposure_notice(settings):
        log.warning(line)
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no threads or model state forked
    receiver, sender = context.Pipe(duplex=False)
    prepare = context.Process(target=_prepare, args=(settings, sender), name="qa-prepare")
    prepare.start()
    prepare.join()
    problem = receiver.recv() if receiver.poll() else "the process preparing the index failed; see the log above"
    if problem is not None:
        raise IndexError_(problem)
    # Held, never listened on, until the workers stop: the port is checked once, here, and stays ours.
    reservation = bind(settings.host, settings.port)
    jobs = Path(tempfile.mkdtemp(prefix="qa-jobs-"))  # the workers' shared job states (see api.Jobs)
    stopping = threading.Event()

    def stop(signum: int, frame: Any) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    workers: list[tuple[Any, float]] = []
    try:
        for _ in range(settings.workers):
            workers.append(_start(context, settings, not workers, jobs))
        log.info("serving on http://%s:%d with %d worker processes", settings.host, settings.port, settings.workers)
        while not stopping.wait(0.5):
            for number, (process, started) in enumerate(workers):
                if process.is_alive():
                    continue
                if time.monotonic() - started < MIN_UPTIME:
                    raise QAError(f"worker {process.pid} exited with status {process.exitcode} right after "
                                  "starting; see the log above")
                log.warning("worker %d exited with status %s; starting another", process.pid, process.exitcode)
                workers[number] = _start(context, settings, number == 0, jobs)
    finally:
        for process, _ in workers:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)  # uvicorn finishes the requests in flight, then exits
        for process, _ in workers:
            process.join(timeout=20)
            if process.is_alive():
                process.kill()
                process.join()
        reservation.close()
        shutil.rmtree(jobs, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _start(context: Any, settings: Settings, watch: bool, jobs: Path) -> tuple[Any, float]:
    process = context.Process(target=_worker, args=(settings, watch, jobs), name="qa-worker")
    process.start()
    return process, time.monotonic()
