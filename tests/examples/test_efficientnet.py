"""The pretrained EfficientNet-Lite0 example, served end to end through every loader.

Real photographs (foolbox's 20 ImageNet validation images, resized to 224×224 as foolbox
itself does) go through ``gradsentry check`` to a server started in this process on the
eager (factory + state dict), TorchScript and ONNX artifacts, with the committed bundle.
The printed labels must be the photos' classes for at least 16 of 20 (the pretrained
model gets 17 at this resolution; ImageNet top-1 of EfficientNet-Lite0 is about 75%).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from detectors.examples import efficientnet as example
from service import cli
from service.config import load_config
from service.server import create_server

LINE = re.compile(r"^(?P<file>\S+): predicted (?P<cls>\d+) \((?P<label>.*?)\)  (RELIABLE|FLAGGED)")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("efficientnet")
    example.photos(out / "photos")
    torch.save(example.build_pretrained().state_dict(), out / "model.pt")
    example.export_torchscript(out / "model.ts")
    example.export_onnx(out / "model.onnx")
    example.server_configs(out, example.BUNDLE)
    return out


@pytest.mark.parametrize("fmt", ["eager", "torchscript", "onnx"])
def test_check_prints_the_photos_classes(artifacts: Path, fmt: str, capsys) -> None:
    torch.set_num_threads(1)
    config = load_config(
        artifacts / f"serve-{fmt}.yaml",
        environ={
            "GRADSENTRY_PORT": "0",
            "GRADSENTRY_METRICS_PORT": "0",
            "GRADSENTRY_DEVICE": "cpu",
            "GRADSENTRY_TORCH_THREADS": "1",
            # the model in this process: one model load per format instead of two processes'
            # (the process worker is what the demo's server tests exercise)
            "GRADSENTRY_MODEL_WORKER": "inline",
        },
    )
    files = sorted((artifacts / "photos").glob("*.png"))
    assert len(files) == 20
    running, port = create_server(config)
    try:
        status = cli.main(["check", *map(str, files), "--target", f"127.0.0.1:{port}"])
    finally:
        running.stop(None).wait(10)
    assert status == 0
    lines = capsys.readouterr().out.splitlines()
    parsed = [m for m in map(LINE.match, lines) if m]
    assert len(parsed) == 20, lines
    labels = example.labels()
    correct = 0
    for m in parsed:
        predicted = int(m["cls"])
        assert m["label"] == labels[predicted]  # the server speaks the 1,000 ImageNet names
        correct += predicted == example.true_class(Path(m["file"]))
    assert correct >= 16, lines
