"""HTTP adapter: FastAPI routes over one Assistant, plus the chat page from web/."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Annotated, Any, AsyncIterator, Literal

import anyio
from fastapi import Body, Depends, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from pydantic_core import to_json
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import security, serialize
from .assistant import Assistant, Upload
from .config import Settings
from .conversation import MAX_HISTORY
from .errors import (BuildCancelled, DocumentError, DocumentNotFound, IndexBusy, IndexCorrupt, IndexError_,
                     IndexIncompatible, IndexMissing, QAError, QuestionError, TooManyUpdates)

log = logging.getLogger("qa.api")
WEB_DIR = Path(__file__).resolve().parent.parent / "web"
# The chat page runs only its own script file: no inline script, nothing from elsewhere.
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# Swagger UI (/docs) needs its own inline bootstrap script; its assets still come from this server.
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; object-src 'none'; frame-ancestors 'none'")
MAX_JSON_BYTES = 64 * 1024
MAX_FILES = 20

_STATUS: dict[type[QAError], int] = {
    QuestionError: 422, DocumentNotFound: 404, DocumentError: 422, IndexMissing: 503, IndexBusy: 409,
    TooManyUpdates: 429, IndexCorrupt: 503, IndexIncompatible: 503, IndexError_: 503,
}
_CODES: dict[type[QAError], str] = {
    QuestionError: "bad_question", DocumentNotFound: "not_found", DocumentError: "bad_document",
    IndexMissing: "no_index", IndexBusy: "busy", IndexCorrupt: "index_corrupt", IndexIncompatible: "index_incompatible",
    TooManyUpdates: "too_many_updates", BuildCancelled: "cancelled",
}


# Codes for errors raised as HTTP statuses: the same code as a domain error with that status.
_HTTP_CODES = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error shape: {"error": {"code": ..., "message": ...}}."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


# --- request and response models (they also document the API at /docs) ---------------------

class FiltersModel(BaseModel):
    """Which articles may answer; every condition given must hold. Applied before ranking."""

    sources: list[str] | None = Field(None, max_length=100, description="Only articles from these sources (any case).")
    published_from: str | None = Field(None, description="Only articles published on or after this date, YYYY-MM-DD.")
    published_to: str | None = Field(None, description="Only articles published on or before this date, YYYY-MM-DD.")
    doc_ids: list[str] | None = Field(None, max_length=100, description="Only these articles.")

    model_config = {"extra": "forbid"}


class AskRequest(BaseModel):
    # Blank and empty questions are refused by the assistant, with the same message the CLI gives.
    question: str = Field(max_length=4000, description="What to ask about the articles: a question or keywords.",
                          examples=["What is the total area of the Hetao cooperation zone?"])
    top_k: int = Field(5, ge=1, le=50, strict=True, description="How many passages to return.")
    mode: Literal["hybrid", "dense", "lexical"] | None = Field(None, description="Retrieval mode; hybrid by default.")
    history: list[str] = Field(default_factory=list, max_length=MAX_HISTORY,
                               description="The conversation's earlier questions, oldest first, for follow-ups "
                                           f"(at most {MAX_HISTORY}).")
    filters: FiltersModel | None = Field(None, description="Limit the articles that may answer.")

    model_config = {"extra": "forbid", "json_schema_extra": {"examples": [
        {"question": "Who is the mayor of Shenzhen?", "top_k": 5}]}}


class SpanModel(BaseModel):
    start: int = Field(description="Start offset of the answer words in the article text.")
    end: int
    text: str = Field(description="The answer words: the article text from start to end.")


class AnswerModel(BaseModel):
    text: str
    passage: int = Field(description="`rank` of the passage holding the sentence (counted from 1).")
    start: int = Field(description="Start offset of the sentence in the article text.")
    end: int
    score: float
    span: SpanModel | None = Field(None, description="The exact answer words the reader picked inside the sentence "
                                                     "(null when the reader is off).")


class Scores(BaseModel):
    dense: float | None = Field(description="Cosine similarity of passage and question.")
    lexical: float | None = Field(description="BM25 score.")
    fused: float | None = Field(description="Fused score the hybrid ranking orders by.")
    sentence: float | None = Field(None, description="Best cosine of one of the passage's sentences (hybrid).")
    article: float | None = Field(None, description="BM25 score of the passage's whole article (hybrid).")
    coverage: float | None = Field(None, description="Best sentence's IDF-weighted share of the question's words (hybrid).")


class PassageModel(BaseModel):
    rank: int
    text: str
    score: float
    doc_id: str
    title: str
    source: str | None
    published: str | None
    url: str | None
    position: int
    start: int = Field(description="Offset of the passage in the text that GET /documents/{doc_id} serves.")
    end: int
    scores: Scores


class AskResponse(BaseModel):
    question: str
    answer: AnswerModel | None = Field(description="The answering sentence, or null when nothing answers.")
    passages: list[PassageModel]
    took_ms: float
    mode: str = Field(description="Retrieval mode used: hybrid, dense or lexical.")
    index_version: str
    resolved_question: str = Field(description="The question as searched: keywords made a question, a follow-up's "
                                               "pronouns replaced from the history.")
    followup: bool = Field(description="Whether the history was used.")
    filters: dict[str, Any] | None = Field(description="The filters applied, or null.")


class DocumentSummary(BaseModel):
    doc_id: str
    title: str
    source: str | None
    published: str | None
    url: str | None
    passages: int


class DocumentFull(DocumentSummary):
    text: str


class Health(BaseModel):
    loaded: bool
    documents: int
    passages: int
    model: str | None
    version: str | None
    built_at: str | None = None
    format_version: int | None = None
    building: bool = False


class JobModel(BaseModel):
    job_id: str
    kind: str
    status: Literal["queued", "running", "done", "failed"]
    documents: list[str]
    message: str | None = None
    index_version: str | None = None


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorModel(BaseModel):
    error: ErrorDetail


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorModel, "description": text}
    for status, text in ((400, "Unparsable request"), (401, "Missing or wrong API token"), (404, "No such article"), (413, "Too large"),
                         (422, "Invalid input"), (503, "No usable index"))
}


# --- background index updates ----------------------------------------------------------------

@dataclass
class Job:
    job_id: str
    kind: str
    documents: list[str]
    status: str = "queued"
    message: str | None = None
    index_version: str | None = None
    size: int = 0  # bytes of articles the job holds while it waits
    done: threading.Event = field(default_factory=threading.Event)

    def json(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "kind": self.kind, "status": self.status, "documents": self.documents,
                "message": self.message, "index_version": self.index_version}


class Jobs:
    """Index updates run one at a time off the request path; questions keep the old index meanwhile.

    At most `max_waiting` updates, holding at most `max_waiting_bytes` of uploaded articles, wait
    their turn: past either, submit raises TooManyUpdates (429 with Retry-After).
    """

    def __init__(self, max_waiting: int = 8, max_waiting_bytes: int = 40_000_000, shared: Path | None = None) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qa-index")
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        # A folder where every job's state is also written, for the other `qa serve --workers` processes:
        # a client's next GET /jobs/{id} may reach another worker than its POST did (see qa/workers.py).
        self.shared = shared
        self.max_waiting = max_waiting
        self.max_waiting_bytes = max_waiting_bytes

    # Finished jobs are remembered for GET /jobs/{id}; beyond this many the oldest finished ones go.
    KEEP_FINISHED = 200
    # Seconds to suggest in Retry-After per update ahead: a small article's update takes a few.
    SECONDS_PER_UPDATE = 5

    def check_room(self, size: int) -> None:
        """Raise TooManyUpdates unless an update carrying `size` bytes of articles may wait now."""
        with self._lock:
            self._check_room(size)

    def _check_room(self, size: int) -> None:
        waiting = [job for job in self._jobs.values() if job.status == "queued"]
        waiting_bytes = sum(job.size for job in waiting)
        retry_after = min(120, self.SECONDS_PER_UPDATE * (len(waiting) + 1))
        if len(waiting) >= self.max_waiting:
            raise TooManyUpdates(f"{len(waiting)} index updates are already waiting; try again in {retry_after} s",
                                 retry_after)
        if waiting_bytes + size > self.max_waiting_bytes:
            raise TooManyUpdates(f"{waiting_bytes:,} bytes of articles are already waiting to be indexed (the limit is "
                                 f"{self.max_waiting_bytes:,}); try again in {retry_after} s", retry_after)

    def submit(self, kind: str, names: list[str], work: Any, size: int = 0) -> Job:
        """Queue an update; `size` is the bytes of articles it holds in memory while it waits."""
        job = Job(uuid.uuid4().hex[:12], kind, names, size=size)
        with self._lock:
            if kind != "sync":  # a folder sync holds nothing and is never queued twice (see sync)
                self._check_room(size)
            finished = [key for key, old in self._jobs.items() if old.done.is_set()]
            for key in finished[:max(0, len(finished) - self.KEEP_FINISHED + 1)]:
                del self._jobs[key]
            self._jobs[job.job_id] = job
        self._publish(job)

        def run() -> None:
            if job.done.is_set():  # failed at shutdown before it ran
                return
            job.status = "running"
            self._publish(job)
            try:
                report = work()
                job.index_version = report.version
                job.status = "done"
            except QAError as exc:
                job.status, job.message = "failed", str(exc)
            except Exception:
                log.exception("index update %s failed", job.job_id)
                job.status, job.message = "failed", "the index update failed; the previous index is still serving"
            finally:
                self._publish(job)
                job.done.set()

        self._pool.submit(run)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None and self.shared is not None and re.fullmatch(r"[0-9a-f]{12}", job_id):
            try:  # another worker's job
                record = json.loads((self.shared / f"{job_id}.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            return Job(record["job_id"], record["kind"], record["documents"], record["status"], record["message"],
                       record["index_version"])
        return job

    def _publish(self, job: Job) -> None:
        """Write the job's state where the other workers read it (a no-op for a single server process)."""
        if self.shared is None:
            return
        temp = self.shared / f".{job.job_id}.{os.getpid()}"
        temp.write_text(json.dumps(job.json()), encoding="utf-8")
        os.replace(temp, self.shared / f"{job.job_id}.json")

    @property
    def busy(self) -> bool:
        with self._lock:
            return any(job.status in ("queued", "running") for job in self._jobs.values())

    def sync(self, work: Any) -> Job:
        """Queue a folder sync (`work`), unless one is already waiting: it will see this change too."""
        with self._lock:
            waiting = next((job for job in self._jobs.values() if job.kind == "sync" and job.status == "queued"), None)
        return waiting or self.submit("sync", [], work)

    def shutdown(self, cancel: threading.Event | None = None, timeout: float = 10.0) -> None:
        """Cancel the running update (`cancel` is the one its builds check) and drop the waiting ones.

        A cancelled update rolls back (see qa/changes.py), so the previous version serves on the next start.
        """
        if cancel is not None:
            cancel.set()
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            if job.status == "queued":
                job.status, job.message = "failed", "the server shut down before this update ran; nothing was changed"
                job.done.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for job in jobs:
            if not job.done.wait(timeout):
                log.warning("index update %s did not stop within %.0f s", job.job_id, timeout)
                break


# --- the application --------------------------------------------------------------------------


# The middlewares below are plain ASGI: Starlette's @app.middleware("http") runs every request through
# extra tasks and streams, which cost more than the rest of the HTTP layer together.


class BodyLimit:
    """Refuse a body whose Content-Length is over the limit before reading it, and count the bytes of
    one as they arrive, so a body with no Content-Length (Transfer-Encoding: chunked) is stopped at the
    same limit."""

    def __init__(self, app: Any, limit_for: Any) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        length = next((value.decode("latin-1") for name, value in scope["headers"] if name == b"content-length"), None)
        if length is not None and (not length.isdigit() or int(length) > limit):
            await error_response(413, "too_large", f"request body over {limit:,} bytes")(scope, receive, send)
            return
        received = 0

        async def counted() -> Any:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                # FastAPI re-raises HTTP exceptions met while reading a body, so the handlers answer 413.
                raise StarletteHTTPException(413, f"request body over {limit:,} bytes")
            return message

        await self.app(scope, counted, send)


class SecurityHeaders:
    """No MIME sniffing, no referrer, and a content security policy on every response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = DOCS_CSP if scope["path"].startswith("/docs") else PAGE_CSP

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "no-referrer"
                headers["Content-Security-Policy"] = policy
            await send(message)

        await self.app(scope, receive, with_headers)


def create_app(assistant: Assistant, web_dir: Path = WEB_DIR, *, watch: bool = False,
               shared_jobs: Path | None = None) -> Any:
    """An app serving one assistant; the caller decides when the index is built or loaded.

    `watch`: at start, bring the index in line with the articles folder, then follow articles added to
    or deleted from the folder while serving (see qa/watch.py). `shared_jobs`: the folder where the
    workers of one `qa serve --workers` publish their jobs to each other (see Jobs).
    """
    settings: Settings = assistant.settings
    jobs = Jobs(shared=shared_jobs)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        assistant.cancel.clear()  # set by a previous run of this app's shutdown
        watcher = start_watching(assistant, jobs) if watch else None
        yield
        if watcher is not None:
            watcher.stop()
        jobs.shutdown(assistant.cancel)

    app = FastAPIOffline(
        lifespan=lifespan,
        title="qa: questions over news articles",
        version="1.0",
        description="Ask questions of a folder of news articles and get cited passages, offline.",
        redoc_url=None,
    )
    app.state.assistant = assistant
    app.state.jobs = jobs
    templates = Jinja2Templates(directory=str(web_dir / "templates"))
    app.mount("/static", StaticFiles(directory=str(web_dir / "static")), name="static")

    def body_limit(path: str) -> int:
        return settings.max_upload_bytes * MAX_FILES + 64 * 1024 if path == "/documents" else MAX_JSON_BYTES

    app.add_middleware(BodyLimit, limit_for=body_limit)
    # Outside the body limit, so a request from another site is refused before its body is read.
    app.add_middleware(security.RequestGuard, settings=settings, refuse=error_response)
    app.add_middleware(SecurityHeaders)  # added last, so outermost: the body limit's 413 gets the headers too

    @app.exception_handler(QAError)
    async def qa_error(request: Request, exc: QAError) -> JSONResponse:
        status = next((code for kind, code in _STATUS.items() if isinstance(exc, kind)), 400)
        code = next((name for kind, name in _CODES.items() if isinstance(exc, kind)), "error")
        retry = {"Retry-After": str(exc.retry_after)} if isinstance(exc, TooManyUpdates) else None
        return error_response(status, code, str(exc), retry)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for error in exc.errors():
            if error.get("type") == "json_invalid":
                # Its location is a character offset, not a field.
                at = next((part for part in error.get("loc", ()) if isinstance(part, int)), None)
                reason = (error.get("ctx") or {}).get("error", "")
                problems.append(f"the request body is not valid JSON ({reason or 'cannot parse it'}"
                                f"{f' at character {at}' if at is not None else ''}); send a JSON object")
                continue
            where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
            if error.get("type") == "extra_forbidden":
                problems.append(f"{where}: unknown field; see /docs for the fields this request takes")
                continue
            problems.append(f"{where}: {error.get('msg', 'invalid')}")
        return error_response(422, "invalid_request", "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", "something went wrong on the server; it has been logged")

    def require_token(request: Request) -> None:
        token = settings.api_token
        if not token:
            return
        if not security.token_matches(security.presented_token(request.scope["headers"]), token):
            raise StarletteHTTPException(401, "this action needs the API token (Authorization: Bearer ...)")

    # Questions are worked out on at most two threads per core: one's encoding and FAISS search (which
    # release the interpreter lock) overlap another's Python steps, and more threads only contend for the
    # lock (measured at 8 clients on 2 cores: 168-176 req/s with Starlette's 40 threads, 228-242 with 4).
    ask_threads = anyio.CapacityLimiter(2 * len(os.sched_getaffinity(0)))
    # Parsing holds the interpreter lock throughout: one upload at a time leaves the others' threads room.
    parse_threads = anyio.CapacityLimiter(1)

    async def ask(question: str, top_k: int, mode: str | None, history: list[str] | None = None,
                  filters: dict[str, Any] | None = None) -> Response:
        """A repeated question is answered from the cache here; any other is worked out in the thread pool,
        off the event loop. The body is serialised once, by pydantic-core, as the response model would be."""
        options = {"history": history, "filters": filters}
        result = assistant.cached(question, top_k, mode, **options)  # type: ignore[arg-type]
        if result is None:
            result = await anyio.to_thread.run_sync(partial(assistant.ask, question, top_k, mode, **options),  # type: ignore[arg-type]
                                                    limiter=ask_threads)
        return Response(to_json(serialize.result_json(result), inf_nan_mode="null"), media_type="application/json")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page(request: Request) -> Any:
        return templates.TemplateResponse(request, "index.html", {"max_question_chars": settings.max_question_chars})

    @app.post("/ask", response_model=AskResponse, responses=_ERRORS, summary="Ask a question")
    async def ask_post(body: Annotated[AskRequest, Body()]) -> Any:
        """Best passages with citations, and the answering sentence when the evidence is strong."""
        filters = body.filters.model_dump(exclude_none=True) if body.filters is not None else None
        return await ask(body.question, body.top_k, body.mode, body.history, filters)

    @app.get("/ask", response_model=AskResponse, responses=_ERRORS, summary="Ask a question (query string)")
    async def ask_get(
        q: Annotated[str, Query(max_length=4000, examples=["Who is the mayor of Shenzhen?"])],
        top_k: Annotated[int, Query(ge=1, le=50)] = 5,
        mode: Annotated[Literal["hybrid", "dense", "lexical"] | None, Query()] = None,
    ) -> Any:
        return await ask(q, top_k, mode)

    @app.get("/health", response_model=Health, summary="Is an index loaded, and what does it hold")
    def health() -> Any:
        return {**assistant.stats(), "building": jobs.busy}

    @app.get("/documents", response_model=list[DocumentSummary], responses=_ERRORS, summary="List indexed articles")
    def list_documents() -> Any:
        return [serialize.document_json(doc, n) for doc, n in assistant.documents()]

    @app.get("/documents/{doc_id}", response_model=DocumentFull, responses=_ERRORS, summary="One article, cleaned text")
    def get_document(doc_id: str) -> Any:
        doc, n = assistant.document(doc_id)
        return serialize.document_json(doc, n, with_text=True)

    @app.post("/documents", status_code=202, response_model=JobModel, responses=_ERRORS, summary="Add articles",
              dependencies=[Depends(require_token)])
    async def add_documents(files: Annotated[list[UploadFile], File(
            description="Articles: .txt or .md (UTF-8), .html or .htm pages, .pdf files")]) -> Any:
        """Checked at once; indexed in the background while the current index keeps answering."""
        if not files:
            raise DocumentError("no files uploaded")
        if len(files) > MAX_FILES:
            raise DocumentError(f"at most {MAX_FILES} files at once")
        jobs.check_room(sum(upload.size or 0 for upload in files))  # refused before any parsing
        uploads = []
        for upload in files:
            data = await upload.read(settings.max_upload_bytes + 1)
            uploads.append(Upload(upload.filename or "", data, upload.size))
        # Parsed once, in a worker thread: a large article takes a while, and the event loop answers others.
        checked = await anyio.to_thread.run_sync(assistant.validate_uploads, uploads, limiter=parse_threads)
        names = [name for name, _ in checked]
        return jobs.submit("add", names, lambda: assistant.add(uploads, parsed=checked), sum(len(u.data) for u in uploads)).json()

    @app.delete("/documents/{doc_id}", status_code=202, response_model=JobModel, responses=_ERRORS,
                summary="Remove an article", dependencies=[Depends(require_token)])
    def delete_document(doc_id: str) -> Any:
        assistant.document(doc_id)  # 404 now rather than a failed job later
        return jobs.submit("remove", [doc_id], lambda: assistant.remove(doc_id)).json()

    @app.get("/jobs/{job_id}", response_model=JobModel, responses=_ERRORS, summary="State of an index update")
    def get_job(job_id: str) -> Any:
        job = jobs.get(job_id)
        if job is None:
            raise StarletteHTTPException(404, f"no job {job_id!r}")
        return job.json()

    return app


def start_watching(assistant: Assistant, jobs: Jobs) -> Any:
    """Queue a sync of the index with the articles folder now, and another whenever the folder changes.

    Returns the running Watcher. (Versions other processes make live are followed by workers.VersionFollower.)
    """
    from .watch import Watcher

    def sync() -> None:
        jobs.sync(lambda: assistant.build(log=log.info))

    sync()
    return Watcher(assistant.settings.docs_dir, sync).start()


def limit_threads() -> None:
    """One thread per question in FAISS (OpenMP) and BLAS: the server already answers questions in parallel,
    and on a few cores more threads only spend CPU time waiting for each other."""
    # OpenMP keeps its thread count per thread, and threads started later (the request pool's) take the
    # process default, which OMP_NUM_THREADS sets when the OpenMP library loads: call this before faiss is
    # imported (qa imports it lazily). omp_set_num_threads covers this thread if it was imported already.
    os.environ["OMP_NUM_THREADS"] = "1"
    # Its loader logs, at INFO, every SIMD build it looks for and does not find before the one it loads.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss

    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(1)
    threadpool_limits(1, user_api="blas")  # BLAS pools are process-wide, so this covers every thread


def serve(settings: Settings) -> None:
    """`qa serve`: build the index if there is none, then answer on host:port."""
    import sys

    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limit_threads()
    assistant = Assistant(settings)
    report = assistant.ensure_index(progress=sys.stderr.isatty(), log=log.info)
    if report is not None:
        log.info("built index: %d articles, %d passages in %.1fs", report.documents, report.passages, report.seconds)
    assistant.warm_up()
    from .workers import VersionFollower

    VersionFollower(assistant).start()  # versions written by other processes (`qa add`, `qa index`) are served too
    log.info("serving %d articles on http://%s:%d", assistant.stats()["documents"], settings.host, settings.port)
    for line in security.exposure_notice(settings):
        log.warning(line)
    uvicorn.run(create_app(assistant, watch=True), host=settings.host, port=settings.port, log_level="info", **server_options())


def server_options() -> dict[str, Any]:
    """uvicorn options every `qa serve` process uses: slow clients are cut off."""
    # uvicorn parses HTTP with httptools (a dependency): about 0.2 ms less per request than its pure-Python
    # h11 parser. Its protocol is extended to close a connection whose request headers take too long, which
    # uvicorn does not do itself (timeout_keep_alive only covers the wait between two requests).
    return {"http": security.header_timeout_protocol(), "timeout_keep_alive": 5}
