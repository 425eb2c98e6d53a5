"""Sentry: a model plus its bundle, scoring batches exactly like the fitted detector."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from detectors.bundle import (
    BundleError,
    BundleFormatError,
    BundleMismatchError,
    model_fingerprint,
)
from detectors.challenges import parse_spec
from detectors.fitting import FitResult
from detectors.sentry import Sentry
from detectors.setcache import SetCache


@pytest.fixture(scope="module")
def digits_sentry(digits_model: nn.Module, bundle_dir: Path) -> Sentry:
    return Sentry.load(digits_model, bundle_dir)


@pytest.fixture(scope="module")
def mixed(digits_model: nn.Module, test_split: tuple[np.ndarray, np.ndarray]) -> torch.Tensor:
    """float32 [40, 1, 28, 28]: 20 clean digits, then the same 20 under FGSM."""
    images, labels = test_split[0][:20], test_split[1][:20]
    adv = SetCache(None).generate(parse_spec("fgsm"), digits_model, images, labels, seed=5)
    return torch.from_numpy(np.concatenate([images, adv]))


def test_check_matches_the_scikit_learn_detector(
    digits_sentry: Sentry, fitted: FitResult, mixed: torch.Tensor
) -> None:
    out = digits_sentry.check(mixed)
    reference = fitted.extractor.extract(mixed)
    np.testing.assert_allclose(out.features, reference.features, rtol=1e-6)
    expected = fitted.detector.scores(reference.features)
    np.testing.assert_allclose(out.score, expected.probability, atol=1e-5)
    assert out.kind_scores.keys() == expected.kind_scores.keys()
    for kind, values in expected.kind_scores.items():
        np.testing.assert_allclose(out.kind_scores[kind], values, atol=1e-5)
    np.testing.assert_array_equal(out.flagged, out.score >= digits_sentry.threshold)
    assert digits_sentry.threshold == pytest.approx(fitted.detector.threshold_)
    # And the verdicts mean something: the FGSM half scores above the clean half.
    assert out.score[20:].mean() > out.score[:20].mean()
    assert np.mean(out.flagged[20:]) > 0.8


def test_verdict_fields_are_consistent(digits_sentry: Sentry, mixed: torch.Tensor) -> None:
    out = digits_sentry.check(mixed)
    n = len(mixed)
    assert out.logits.shape == (n, 10) and out.logits.dtype == np.float32
    assert out.probabilities.shape == (n, 10) and out.probabilities.dtype == np.float32
    np.testing.assert_allclose(out.probabilities.sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(out.predicted, out.probabilities.argmax(1))
    assert out.score.shape == (n,) and np.all((out.score >= 0) & (out.score <= 1))
    assert out.flagged.dtype == np.bool_
    assert set(out.kind_scores) == {"adversarial", "corrupted", "ood"}
    stacked = np.stack([out.kind_scores[k] for k in out.kind_scores], axis=1)
    assert out.kind == [list(out.kind_scores)[i] for i in stacked.argmax(1)]
    assert set(out.timings) == {"forward", "backward", "statistics", "detector"}
    assert all(t >= 0 for t in out.timings.values())


def test_a_sample_alone_equals_the_sample_in_a_batch(
    digits_sentry: Sentry, mixed: torch.Tensor
) -> None:
    batch = digits_sentry.check(mixed)
    for i in (0, 7, 25, 39):
        alone = digits_sentry.check(mixed[i : i + 1])
        # Equal up to float32 rounding in the probe (reductions run in another order).
        np.testing.assert_allclose(alone.features[0], batch.features[i], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(alone.score[0], batch.score[i], atol=1e-5)
        for kind in batch.kind_scores:
            np.testing.assert_allclose(
                alone.kind_scores[kind][0], batch.kind_scores[kind][i], atol=1e-5
            )
        if abs(batch.score[i] - digits_sentry.threshold) > 1e-5:
            assert alone.flagged[0] == batch.flagged[i]


def test_load_refuses_a_model_with_other_weights(digits_model: nn.Module, bundle_dir: Path) -> None:
    other = copy.deepcopy(digits_model)
    with torch.no_grad():
        other.fc2.bias.add_(1e-3)
    with pytest.raises(BundleMismatchError, match="fitted for model") as info:
        Sentry.load(other, bundle_dir)
    message = str(info.value)
    assert model_fingerprint(digits_model)[:19] in message
    assert model_fingerprint(other)[:19] in message


def test_load_refuses_another_architecture_by_fingerprint(bundle_dir: Path) -> None:
    """Refused as another model, before its feature spec is tried on the wrong layers."""
    linear = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)).eval()
    with pytest.raises(BundleMismatchError, match="fitted for model"):
        Sentry.load(linear, bundle_dir)


def test_load_refuses_a_model_with_other_buffers(digits_model: nn.Module, bundle_dir: Path) -> None:
    """BatchNorm running statistics change the features, so they are part of the model."""
    other = copy.deepcopy(digits_model)
    other.features[1].running_mean.add_(0.01)
    with pytest.raises(BundleMismatchError):
        Sentry.load(other, bundle_dir)


def _tampered(bundle_dir: Path, tmp_path: Path, edit) -> Path:
    """A copy of the bundle with ``edit(manifest)`` applied to its manifest."""
    copy_dir = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy_dir)
    manifest = json.loads((copy_dir / "manifest.json").read_text())
    edit(manifest)
    (copy_dir / "manifest.json").write_text(json.dumps(manifest))
    return copy_dir


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["feature_spec"].pop("losses"),
        lambda m: m["feature_spec"]["novelty"].update(means=[[0.0, 1.0]]),
        lambda m: m["feature_spec"].update(logit_stats=["msp", "median"]),
        lambda m: m["feature_spec"].update(losses=["all_ones", "no_such_loss"]),
        lambda m: m.update(feature_spec={}),
    ],
    ids=["missing-losses", "bad-means", "unknown-stat", "unknown-loss", "empty"],
)
def test_load_turns_a_bad_feature_spec_into_a_bundle_error(
    digits_model: nn.Module, bundle_dir: Path, tmp_path: Path, edit
) -> None:
    """A manifest is user input: its problems are BundleErrors (the CLI prints them as
    one line), not a stray ValueError from deep inside."""
    broken = _tampered(bundle_dir, tmp_path, edit)
    with pytest.raises(BundleFormatError, match="feature"):
        Sentry.load(digits_model, broken)


def test_load_refuses_a_feature_spec_that_disagrees_with_the_schema(
    digits_model: nn.Module, bundle_dir: Path, tmp_path: Path
) -> None:
    broken = _tampered(bundle_dir, tmp_path, lambda m: m["feature_spec"].update(novelty=None))
    with pytest.raises(BundleMismatchError, match="feature schema"):
        Sentry.load(digits_model, broken)


def test_load_of_a_missing_bundle_is_a_bundle_error(
    digits_model: nn.Module, tmp_path: Path
) -> None:
    with pytest.raises(BundleError, match="no bundle directory"):
        Sentry.load(digits_model, tmp_path / "nowhere")
