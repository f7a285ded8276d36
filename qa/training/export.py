"""Trained reader -> ONNX int8 folder (model.onnx, tokenizer.json, reader.json) with a model card."""

from __future__ import annotations

import inspect
import json
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any


def export(run: Path, target: Path, quantize: bool = True) -> Path:
    """Write the reader trained in `run` into `target` as ONNX (int8 unless quantize=False)."""
    import torch

    from .loop import TrainSettings, encoder_path
    from .model import ReaderNet

    info = json.loads((run / "train_settings.json").read_text())
    fields = set(inspect.signature(TrainSettings).parameters)
    settings = TrainSettings(**{k: v for k, v in info.items() if k in fields})
    model = ReaderNet.from_encoder(encoder_path(settings))
    model.load_state_dict(torch.load(run / "reader.pt", weights_only=True))
    model.eval()
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "tokens"} for n in names}
    axes.update({"logit": {0: "batch"}, "start": {0: "batch", 1: "tokens"}, "end": {0: "batch", 1: "tokens"}})
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".reader-export-") as tmp:
        work = Path(tmp)
        out = work / "out"
        out.mkdir()
        dummy = (torch.ones(2, 16, dtype=torch.long), torch.ones(2, 16, dtype=torch.long),
                 torch.zeros(2, 16, dtype=torch.long))
        options: dict[str, Any] = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
        # The TorchScript exporter is deprecated in favour of torch.export, which does not yet take this model's
        # dynamic axes as plainly; its warning says nothing about the file it writes.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, dummy, str(work / "raw.onnx"), input_names=names,
                              output_names=["logit", "start", "end"], dynamic_axes=axes, opset_version=17, **options)
        from onnxruntime.transformers.optimizer import optimize_model

        config = model.encoder.config
        fused = optimize_model(str(work / "raw.onnx"), model_type="bert", num_heads=config.num_attention_heads,
                               hidden_size=config.hidden_size, opt_level=1)
        fused.save_model_to_file(str(work / "fused.onnx"))
        if quantize:
            import onnx
            from onnxruntime.quantization import QuantType, quantize_dynamic

            # The fused graph's shape inference leaves some MatMul outputs untyped; they are float32.
            quantize_dynamic(str(work / "fused.onnx"), str(out / "model.onnx"), weight_type=QuantType.QInt8,
                             per_channel=True, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        else:
            shutil.move(str(work / "fused.onnx"), out / "model.onnx")
        shutil.copy(run / "tokenizer" / "tokenizer.json", out / "tokenizer.json")
        (out / "reader.json").write_text(json.dumps({
            "max_length": settings.max_length, "int8": quantize, "steps": info.get("steps"),
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }, indent=1) + "\n")
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(out), target)
    return target
