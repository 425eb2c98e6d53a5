"""Real model artifacts built from the committed demo model, one builder per loader format.

Each builder writes its artifact under a directory and returns the options to pass to
``service.models.load(format, **options)``.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

import detectors.demo.model as demo_module
from detectors.demo import ARTIFACTS, load_demo_model
from service.spec import InputSpec

DEMO_FACTORY = "detectors.demo.model:build_model"
SPEC = InputSpec()  # the demo's: float32 [1, 28, 28] in [0, 1]
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
HANDLER = '''"""A minimal TorchServe handler: tensors in, probabilities out."""
from ts.torch_handler.base_handler import BaseHandler


class DigitHandler(BaseHandler):
    def postprocess(self, data):
        return data.softmax(1).tolist()
'''


def example(batch: int = 2) -> torch.Tensor:
    """A fixed demo-shaped input for tracing and exporting."""
    return torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def save_traced(model: nn.Module, path: Path) -> Path:
    """``torch.jit.trace`` + ``torch.jit.save`` (deprecated upstream, still what users ship)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.trace(model, example()).save(str(path))
    return path


def save_scripted(model: nn.Module, path: Path) -> Path:
    """``torch.jit.script`` + ``torch.jit.save``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(model).save(str(path))
    return path


def export_onnx(
    model: nn.Module, path: Path, keep_batchnorm: bool = True, dynamic_batch: bool = True
) -> Path:
    """Legacy (TorchScript-based) exporter; ``keep_batchnorm=False`` is the exporter's
    eval-mode default, which folds BatchNorm into the preceding Conv; without
    ``dynamic_batch`` the graph takes batches of exactly 2."""
    training = torch.onnx.TrainingMode.PRESERVE if keep_batchnorm else torch.onnx.TrainingMode.EVAL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example(),),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None,
            training=training,
        )
    return path


def manifest(
    serialized: str | None = "model.pt", model_file: str | None = "model.py"
) -> dict[str, Any]:
    """MAR-INF/MANIFEST.json exactly as torch-model-archiver 0.12 writes it."""
    model: dict[str, Any] = {"modelName": "mnist"}
    if serialized is not None:
        model["serializedFile"] = serialized
    model["handler"] = "handler.py"
    if model_file is not None:
        model["modelFile"] = model_file
    model["modelVersion"] = "1.0"
    return {
        "createdOn": "01/06/2025 12:00:00",
        "runtime": "python",
        "model": model,
        "archiverVersion": "0.12.0",
    }


def write_mar(path: Path, files: Mapping[str, bytes | str], meta: Mapping[str, Any]) -> Path:
    """A .mar zip: ``files`` at their names plus MAR-INF/MANIFEST.json from ``meta``."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps(meta, indent=2))
    return path


def demo_source() -> str:
    """The demo model's real source file, as ``--model-file`` would archive it."""
    return Path(demo_module.__file__).read_text()


def eager_mar_files(labels: bool = True) -> dict[str, bytes | str]:
    """Files of an eager demo archive: model.py, model.pt (state dict), handler, labels."""
    files: dict[str, bytes | str] = {
        "model.py": demo_source(),
        "model.pt": (ARTIFACTS / "model.pt").read_bytes(),
        "handler.py": HANDLER,
    }
    if labels:
        files["index_to_name.json"] = json.dumps(dict(enumerate(DIGIT_NAMES)))
    return files


def build_eager(tmp: Path) -> dict[str, Any]:
    path = tmp / "state.pt"
    torch.save(load_demo_model().state_dict(), path)
    return {"path": path, "factory": DEMO_FACTORY, "spec": SPEC}


def build_torchscript(tmp: Path) -> dict[str, Any]:
    path = save_traced(load_demo_model(), tmp / "traced.pt")
    return {"path": path, "factory": DEMO_FACTORY, "spec": SPEC}


def build_mar(tmp: Path) -> dict[str, Any]:
    path = write_mar(tmp / "mnist.mar", eager_mar_files(), manifest())
    return {"path": path, "spec": SPEC}


def build_onnx(tmp: Path) -> dict[str, Any]:
    return {"path": export_onnx(load_demo_model(), tmp / "mnist.onnx")}


BUILDERS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "eager": build_eager,
    "torchscript": build_torchscript,
    "mar": build_mar,
    "onnx": build_onnx,
}
