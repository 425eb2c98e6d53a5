"""The server pointed at a deployed artifact: model_format / model_path, the spec the artifact
states, and bad artifacts refused with one clear error before anything reports SERVING."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
import yaml

from detectors.demo import ARTIFACTS
from detectors.sentry import Sentry
from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service._proto.gradsentry.v1 import reliability_pb2_grpc as pb_grpc
from service.config import ConfigError, load_config
from service.loader import ModelLoadError, load_model
from service.server import create_server
from tests.servers import WAIT, server_env
from tests.service.models.artifacts import (
    BUILDERS,
    DIGIT_NAMES,
    eager_mar_files,
    manifest,
    write_mar,
)

ROOT = Path(__file__).resolve().parents[2]
N = 8  # digits per server check
BASE_ENV = {"GRADSENTRY_PORT": "0", "GRADSENTRY_METRICS_PORT": "0", "GRADSENTRY_DEVICE": "cpu"}


def config_for(**settings: str):
    """A config of the test server with GRADSENTRY_<KEY> overrides."""
    env = {**BASE_ENV, **{f"GRADSENTRY_{k.upper()}": v for k, v in settings.items()}}
    return load_config(environ=env)


def spec_mar(tmp: Path, **spec: object) -> Path:
    """The demo as an eager .mar with index_to_name.json and an input_spec.json of ``spec``."""
    files = eager_mar_files()
    files["input_spec.json"] = json.dumps(spec)
    return write_mar(tmp / "mnist.mar", files, manifest())


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"model_format": "pickle"}, r"model_format: unknown format 'pickle' \(known: auto, eager"),
        ({"model_format": "mar"}, "model_path: model_format 'mar' needs the path"),
        ({"model_path": "m.mar"}, "model_path: not used with model_format 'eager'"),
        (
            {"model_format": "mar", "model_path": "m.mar", "model_weights": "w.pt"},
            "model_weights: only for model_format 'eager'",
        ),
        ({"model_format": "onnx", "model_path": "m", "model_factory": "x"}, "model_factory"),
        (
            {"input_shape": "[3, 8, 8]", "input_mean": "[0.5]", "input_std": "[0.2]"},
            r"input: mean/std need one value per channel \(3\)",
        ),
        ({"input_mean": "[0.5]", "input_std": "[0.2, 0.2]"}, "input: mean and std must both"),
    ],
)
def test_model_fields_are_checked_by_name(settings: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_for(**settings)


def test_model_path_in_a_file_is_relative_to_it(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("model_format: auto\nmodel_path: models/mnist.mar\n")
    config = load_config(path, {})
    assert config.model_path == str(tmp_path / "models" / "mnist.mar")


def test_the_archive_states_the_spec_and_the_config_wins_field_by_field(tmp_path: Path) -> None:
    path = spec_mar(tmp_path, shape=[1, 28, 28], value_range=[0, 1], mean=[0.5], std=[0.25])
    device = torch.device("cpu")
    loaded = load_model(config_for(model_format="mar", model_path=str(path)), device)
    assert loaded.spec is not None
    assert (loaded.spec.mean, loaded.spec.std) == ((0.5,), (0.25,))
    assert loaded.spec.labels == tuple(DIGIT_NAMES)  # from index_to_name.json
    mine = config_for(
        model_format="auto",
        model_path=str(path),
        labels=json.dumps([str(d) for d in range(10)]),
        input_range="[0, 2]",
    )
    loaded = load_model(mine, device)
    assert loaded.spec is not None and loaded.spec.labels == tuple(str(d) for d in range(10))
    assert loaded.spec.value_range == (0.0, 2.0) and loaded.spec.mean == (0.5,)
    # The configured shape meets the archive's one-channel mean/std: refused, by field.
    three = config_for(model_format="mar", model_path=str(path), input_shape="[3, 28, 28]")
    with pytest.raises(ModelLoadError, match=r"mean/std need one value per channel \(3\)"):
        load_model(three, device)
    small = config_for(model_format="mar", model_path=str(path), input_shape="[1, 8, 8]")
    with pytest.raises(ModelLoadError, match=r"fails on inputs of shape \[\d+, 1, 8, 8\]"):
        load_model(small, device)
    # Without a config or archive spec the demo's defaults apply, but no digit names.
    eager = load_model(config_for(model_factory="detectors.demo.model:build_model"), device)
    assert eager.spec is not None and eager.spec.shape == (1, 28, 28) and not eager.spec.labels


@pytest.mark.parametrize("name", ["mar", "torchscript", "auto"])
def test_the_server_serves_each_format_like_the_eager_demo(
    name: str, tmp_path: Path, samples: tuple[np.ndarray, np.ndarray], sentry: Sentry
) -> None:
    torch.set_num_threads(1)
    options = BUILDERS["mar" if name == "auto" else name](tmp_path)
    settings = {"model_format": name, "model_path": str(options["path"])}
    if "factory" in options and name == "torchscript":
        settings["model_factory"] = options["factory"]
    running, port = create_server(config_for(**settings))
    try:
        x = (samples[0][:N].astype(np.float32) / 255.0)[:, None]
        reference = sentry.check(torch.from_numpy(x))
        requests = [
            pb.CheckRequest(
                tensor=pb.Tensor(dtype=pb.FLOAT32, shape=[1, 28, 28], data=xi.tobytes()),
                return_probabilities=True,
            )
            for xi in x
        ]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.ReliabilityStub(channel)
            replies = stub.CheckBatch(pb.CheckBatchRequest(requests=requests), timeout=60)
            info = stub.GetInfo(pb.GetInfoRequest(), timeout=10)
    finally:
        running.stop(None).wait(10)
    got = replies.responses
    np.testing.assert_array_equal([r.predicted_class for r in got], reference.predicted)
    np.testing.assert_allclose([r.score for r in got], reference.score, rtol=1e-4, atol=1e-5)
    # The test .mar names its classes; the other artifacts state none and the config sets none.
    expected = DIGIT_NAMES if name in ("mar", "auto") else []
    assert list(info.labels) == expected
    assert [r.label for r in got] == [expected[c] if expected else "" for c in reference.predicted]


def test_an_onnx_twin_needs_a_bundle_fitted_on_it(tmp_path: Path) -> None:
    # ONNX keeps no BatchNorm num_batches_tracked counters, which the bundle's model
    # fingerprint hashes: the demo bundle is refused by name, before anything listens.
    path = BUILDERS["onnx"](tmp_path)["path"]
    with pytest.raises(ValueError, match="bundle was fitted for model sha256:"):
        create_server(config_for(model_format="onnx", model_path=str(path)))


def corrupt_mar(tmp: Path) -> Path:
    good = write_mar(tmp / "good.mar", eager_mar_files(), manifest())
    bad = tmp / "corrupt.mar"
    bad.write_bytes(good.read_bytes()[:-200])
    return bad


def mar_without_weights(tmp: Path) -> Path:
    files = eager_mar_files()
    del files["model.pt"]
    return write_mar(tmp / "noweights.mar", files, manifest())


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (corrupt_mar, r"corrupt.mar is not a TorchServe model archive"),
        (mar_without_weights, "serializedFile 'model.pt', but the archive has no such file"),
        (lambda tmp: tmp / "absent.mar", "not found"),
    ],
)
def test_bad_artifacts_stop_create_server_with_one_clear_error(
    tmp_path: Path, make, message: str
) -> None:
    config = config_for(model_format="auto", model_path=str(make(tmp_path)))
    with pytest.raises(ModelLoadError, match=message) as info:
        create_server(config)
    assert "\n" not in str(info.value)
    with pytest.raises(ModelLoadError, match="weights file not found"):
        create_server(config_for(model_weights=str(tmp_path / "absent.pt")))
    state = tmp_path / "state.pt"
    torch.save(torch.load(ARTIFACTS / "model.pt", weights_only=True), state)
    with pytest.raises(ModelLoadError, match="is a state dict: set model_factory"):
        create_server(config_for(model_format="auto", model_path=str(state)))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"model_format": "pickle", "model_path": "m.pkl"}, "model_format: unknown format"),
        ({"model_format": "mar", "model_path": "corrupt.mar"}, "not a readable zip archive"),
        ({"model_format": "mar", "model_path": "noweights.mar"}, "has no such file"),
    ],
)
def test_gradsentry_serve_exits_non_zero_with_one_line_and_never_serves(
    tmp_path: Path, settings: dict[str, str], message: str
) -> None:
    corrupt_mar(tmp_path)
    mar_without_weights(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"port": 0, "metrics_port": 0, **settings}))
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--config", str(config)],
        cwd=ROOT,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=2 * WAIT,
    )
    stderr = done.stderr
    assert done.returncode == 2, stderr
    # It failed before listening (the server logs when it starts to): nothing could ever
    # have answered, let alone SERVING.
    assert "listening on" not in stderr and "gradsentry serving" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("gradsentry serve: error: "), stderr
    assert message in errors[0]
    assert "Traceback" not in stderr
