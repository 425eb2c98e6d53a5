"""ServerConfig: defaults, YAML file, GRADSENTRY_* overrides, and errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from detectors.demo import ARTIFACTS
from service.config import ConfigError, ServerConfig, load_config


def test_defaults_serve_the_bundled_demo_locally() -> None:
    config = load_config(environ={})
    assert (config.host, config.port, config.metrics_port) == ("127.0.0.1", 50051, 9464)
    assert Path(config.bundle) == ARTIFACTS / "bundle"
    assert (config.model_format, config.model_factory, config.model_weights) == ("eager", "", "")
    assert config.input_spec().shape == (1, 28, 28)
    with pytest.raises(AttributeError):
        config.port = 1  # type: ignore[misc]


def test_yaml_then_env_overrides(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(
        "port: 6000\nmax_batch_size: 8\nbundle: bundles/b1\ninput_shape: [3, 32, 32]\n"
        "labels: [a, b]\ninput_mean: [0.5, 0.5, 0.5]\ninput_std: [0.2, 0.2, 0.2]\n"
    )
    env = {
        "GRADSENTRY_PORT": "7000",
        "GRADSENTRY_MAX_DELAY_MS": "2.5",
        "GRADSENTRY_DEVICE": "cuda:1",
        "GRADSENTRY_LABELS": "[x, y, z]",
        "HOME": "/elsewhere",
    }
    config = load_config(path, env)
    assert config.port == 7000  # env wins over the file
    assert config.max_batch_size == 8
    assert config.max_delay_ms == 2.5
    assert config.device == "cuda:1"
    assert config.labels == ("x", "y", "z")
    assert config.bundle == str((tmp_path / "bundles/b1").resolve())  # relative to the file
    spec = config.input_spec()
    assert spec.shape == (3, 32, 32) and spec.mean == (0.5, 0.5, 0.5)


@pytest.mark.parametrize(
    ("text", "env", "names"),
    [
        ("prot: 1\n", {}, "prot"),
        ("", {"GRADSENTRY_PROT": "1"}, "GRADSENTRY_PROT"),
        ("port: eighty\n", {}, "port"),
        ("", {"GRADSENTRY_PORT": "eighty"}, "port"),
        ("port: 70000\n", {}, "port"),
        ("max_batch_size: 0\n", {}, "max_batch_size"),
        ("", {"GRADSENTRY_QUEUE_SIZE": "true"}, "queue_size"),
        ("max_delay_ms: -1\n", {}, "max_delay_ms"),
        ("device: tpu\n", {}, "device"),
        ("model_worker: thread\n", {}, "model_worker"),
        ("server_nice: 20\n", {}, "server_nice"),
        ("", {"GRADSENTRY_TORCH_THREADS": "-1"}, "torch_threads"),
        ("input_shape: 28\n", {}, "input_shape"),
        ("input_shape: [28, 28]\n", {}, "input_shape"),
        ("input_mean: [0.5]\ninput_std: [0]\n", {}, "std"),
        ("model_factory: nocolon\n", {}, "model_factory"),
        ("- a list\n", {}, "mapping"),
    ],
)
def test_bad_keys_and_values_name_the_key(
    tmp_path: Path, text: str, env: dict[str, str], names: str
) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=names):
        load_config(path, env)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml", {})
    bad = tmp_path / "bad.yaml"
    bad.write_text("port: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, {})


def test_config_is_built_directly_with_validation() -> None:
    with pytest.raises(ConfigError, match="grace_seconds"):
        ServerConfig(grace_seconds=float("nan"))
