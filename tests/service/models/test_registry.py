"""Every registered loader, on a real artifact of the demo model: exact features, one error type."""

from __future__ import annotations

import zipfile
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from detectors.demo import ARTIFACTS
from detectors.demo.model import MnistCNN
from detectors.probe import GradientProbe
from detectors.sentry import Sentry
from service.models import (
    LoadedModel,
    ModelLoadError,
    available_loaders,
    detect_format,
    load,
    register_loader,
    stated_spec,
)
from service.spec import InputSpec
from tests.service.models.artifacts import BUILDERS, DEMO_FACTORY, DIGIT_NAMES, SPEC

LOADERS = sorted(available_loaders())


def test_every_registered_loader_has_an_artifact_builder() -> None:
    missing = sorted(set(LOADERS) - set(BUILDERS))
    assert not missing, f"add a builder to tests/service/models/artifacts.py for {missing}"
    assert set(LOADERS) >= {"eager", "torchscript", "mar", "onnx"}


@pytest.mark.parametrize("name", LOADERS)
def test_features_through_each_loader_equal_the_eager_models(
    name: str,
    tmp_path: Path,
    demo: MnistCNN,
    images: torch.Tensor,
    demo_features: tuple[torch.Tensor, torch.Tensor],
) -> None:
    if name not in BUILDERS:
        pytest.fail(f"no artifact builder for loader {name!r}")
    options = BUILDERS[name](tmp_path)
    loaded = load(name, **options)
    assert isinstance(loaded, LoadedModel)
    assert isinstance(loaded.model, nn.Module) and not loaded.model.training
    assert not isinstance(loaded.model, torch.jit.ScriptModule)  # hooks need eager code
    assert loaded.source.startswith(f"{name}:")
    assert loaded.spec is not None and loaded.spec.shape == (1, 28, 28)
    probe = GradientProbe(loaded.model)
    assert probe.feature_names == GradientProbe(demo).feature_names
    logits, features = probe.features(images)
    torch.testing.assert_close(logits, demo_features[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(features, demo_features[1], rtol=1e-4, atol=1e-4)
    assert detect_format(options["path"]) == name
    assert load("auto", **options).source == loaded.source


@pytest.mark.parametrize("name", LOADERS)
def test_stated_spec_is_what_each_artifact_says_about_its_input(name: str, tmp_path: Path) -> None:
    options = BUILDERS[name](tmp_path)
    stated = stated_spec(name, options["path"])
    assert stated == stated_spec("auto", options["path"])
    assert set(stated) <= {f.name for f in fields(InputSpec)}
    spec = InputSpec(**stated)  # typed as InputSpec takes them
    expected = {
        "eager": {},
        "torchscript": {},
        "mar": {"labels": tuple(DIGIT_NAMES)},  # the test archive has no input_spec.json
        "onnx": {"shape": (1, 28, 28), "dtype": "float32"},
    }
    assert stated == expected.get(name, stated)
    assert spec.shape == (1, 28, 28)


def test_a_mar_loaded_model_is_the_model_the_committed_bundle_was_fitted_for(
    tmp_path: Path, demo: MnistCNN, images: torch.Tensor
) -> None:
    loaded = load("auto", **BUILDERS["mar"](tmp_path))
    reference = Sentry.load(demo, ARTIFACTS / "bundle", device="cpu").check(images)
    verdicts = Sentry.load(loaded.model, ARTIFACTS / "bundle", device="cpu").check(images)
    np.testing.assert_array_equal(verdicts.predicted, reference.predicted)
    np.testing.assert_allclose(verdicts.score, reference.score, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(verdicts.flagged, reference.flagged)


def test_unknown_format_and_wrong_options_are_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"unknown model format 'pickle' \(known: eager, mar"):
        load("pickle", path=tmp_path / "m.pkl")
    with pytest.raises(ModelLoadError, match=r"onnx loader: .*'factory'.*accepts: path, spec"):
        load("onnx", path=tmp_path / "m.onnx", factory=DEMO_FACTORY)
    with pytest.raises(ModelLoadError, match="format 'auto' needs path"):
        load("auto", factory=DEMO_FACTORY)


def test_detect_format_refuses_what_it_cannot_name(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="model file not found"):
        detect_format(tmp_path / "absent.mar")
    with pytest.raises(ModelLoadError, match="is a directory"):
        detect_format(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match=r"cannot tell the model format .*name the format"):
        detect_format(tmp_path / "notes.txt")
    with zipfile.ZipFile(tmp_path / "other.pt", "w") as archive:
        archive.writestr("readme.md", "not a model")
    with pytest.raises(ModelLoadError, match=r"neither a TorchServe .mar .* nor a torch state"):
        detect_format(tmp_path / "other.pt")
    (tmp_path / "garbage.pth").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="neither a TorchScript module nor a torch state"):
        detect_format(tmp_path / "garbage.pth")


def test_eager_loader_checks_weights_and_labels(tmp_path: Path) -> None:
    options = BUILDERS["eager"](tmp_path)
    with pytest.raises(ModelLoadError, match="does not fit"):
        load("eager", **{**options, "factory": "tests.service.models.nets:build_five_classes"})
    with pytest.raises(ModelLoadError, match="returns 10 logits but 3 labels are given"):
        load("eager", **{**options, "spec": replace(SPEC, labels=("a", "b", "c"))})
    digits = tuple(str(d) for d in range(10))
    loaded = load("eager", **{**options, "spec": replace(SPEC, labels=digits)})
    assert loaded.labels == list(digits)
    with pytest.raises(ModelLoadError, match="weights file not found"):
        load("eager", factory=DEMO_FACTORY, path=tmp_path / "absent.pt")
    broken = "tests.service.models.nets:build_broken"
    with pytest.raises(ModelLoadError, match="failed: RuntimeError: weights server unreachable"):
        load("eager", factory=broken)
    with pytest.raises(ModelLoadError, match="missing a required argument: 'factory'"):
        load("auto", path=options["path"])


def test_options_set_to_none_are_unset(tmp_path: Path) -> None:
    options = BUILDERS["eager"](tmp_path)
    loaded = load("eager", **options, model_class=None, tolerance=None)
    assert loaded.source == load("eager", **options).source
    with pytest.raises(ModelLoadError, match="unexpected keyword argument 'model_class'"):
        load("eager", **options, model_class="MnistCNN")


def test_register_loader_refuses_bad_names_and_duplicates() -> None:
    with pytest.raises(ValueError, match="lower-case identifiers"):
        register_loader("Bad-Name")
    with pytest.raises(ValueError, match="already registered"):
        register_loader("onnx")(lambda **options: None)  # type: ignore[arg-type,return-value]
    assert sorted(available_loaders()) == LOADERS  # nothing was added


def test_the_config_knows_every_loader_by_name() -> None:
    """service.config names the formats without importing the loaders; the two must agree."""
    from service.config import MODEL_FORMATS

    assert sorted(MODEL_FORMATS) == LOADERS
