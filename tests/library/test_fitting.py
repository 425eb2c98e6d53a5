"""fit_detector + write_bundle: what is fitted, and what the bundle records about it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from detectors.bundle import BundleExistsError, load_bundle, model_fingerprint
from detectors.challenges import parse_spec
from detectors.features import DEFAULT_LOSSES, FeatureExtractor
from detectors.fitting import FitResult, fit_detector, write_bundle
from detectors.setcache import SetCache
from tests.library.conftest import FIT_SPECS, STATS_SLICE, TARGET_FPR


def test_fit_result_describes_the_fit(
    fitted: FitResult, fit_split: tuple[np.ndarray, np.ndarray]
) -> None:
    det, ext = fitted.detector, fitted.extractor
    assert set(det.kinds_) == {"adversarial", "corrupted", "ood"}
    assert det.n_features_in_ == len(ext.schema)
    np.testing.assert_array_equal(det.log_columns, ext.log_columns)
    assert det.target_fpr == TARGET_FPR
    assert 0 < det.threshold_ < 1
    assert fitted.summary == {
        "n_clean": len(fit_split[0]),
        "challenges": [{"spec": parse_spec(s).spec, "kind": parse_spec(s).kind} for s in FIT_SPECS],
        "losses": list(DEFAULT_LOSSES),
        "views": [],
        "seed": 3,
        "n_stats": STATS_SLICE.stop - STATS_SLICE.start,
        "n_attribution_images": 0,
        "attribution_challenges": [],
    }
    # The summary stores canonical specs, which is what "seen" is judged by later.
    assert fitted.summary["challenges"][0]["spec"] == "fgsm:eps=0.2"


def test_fitted_detector_separates_its_fit_kinds(
    fitted: FitResult, digits_model: nn.Module, test_split: tuple[np.ndarray, np.ndarray]
) -> None:
    """On fresh digits H flags most challenge inputs and few clean ones."""
    images, labels = test_split
    clean = fitted.detector.predict_proba(fitted.extractor.extract_images(images).features)
    for spec in FIT_SPECS:
        made = SetCache(None).generate(parse_spec(spec), digits_model, images, labels, seed=99)
        scores = fitted.detector.predict_proba(fitted.extractor.extract_images(made).features)
        # Nearly every challenge row outscores the median clean row.
        assert np.mean(scores > np.median(clean)) > 0.9, spec
    # 50 calibration rows make the threshold noisy (about 0.25 flagged here at target 0.1),
    # but far from the 0.5+ that statistics fitted on H's own clean rows give.
    assert np.mean(clean >= fitted.detector.threshold_) < 0.4


def test_bundle_manifest_records_the_fit(
    bundle_dir: Path, fitted: FitResult, digits_model: nn.Module
) -> None:
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["model_fingerprint"] == model_fingerprint(digits_model)
    assert manifest["feature_schema"] == fitted.extractor.schema
    assert manifest["feature_spec"] == json.loads(json.dumps(fitted.extractor.to_dict()))
    assert manifest["loss"] == DEFAULT_LOSSES[0]
    assert manifest["fit_summary"] == fitted.summary
    assert manifest["threshold"] == pytest.approx(fitted.detector.threshold_)
    assert manifest["target_fpr"] == TARGET_FPR
    # The stored spec rebuilds an extractor with the same columns on the same model.
    rebuilt = FeatureExtractor.from_dict(digits_model, manifest["feature_spec"])
    assert rebuilt.schema == manifest["feature_schema"]
    loaded = load_bundle(
        bundle_dir,
        model_fingerprint=model_fingerprint(digits_model),
        feature_schema=rebuilt.schema,
    )
    assert loaded.detector.n_features_in_ == len(rebuilt.schema)


def test_write_bundle_refuses_to_replace_without_overwrite(
    bundle_dir: Path, fitted: FitResult, digits_model: nn.Module
) -> None:
    before = {p.name: p.read_bytes() for p in bundle_dir.iterdir()}
    with pytest.raises(BundleExistsError, match="already exists"):
        write_bundle(fitted, digits_model, bundle_dir)
    assert {p.name: p.read_bytes() for p in bundle_dir.iterdir()} == before


def test_fit_needs_a_challenge(
    digits_model: nn.Module, fit_split: tuple[np.ndarray, np.ndarray]
) -> None:
    with pytest.raises(ValueError, match="at least one challenge"):
        fit_detector(digits_model, *fit_split, [], progress=False)


def test_stats_data_and_losses_reach_the_extractor(
    digits_model: nn.Module, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    images, labels = digits
    result = fit_detector(
        digits_model,
        images[:200],
        labels[:200],
        [parse_spec("ood:source=gaussian")],
        stats_images=images[400:700],
        stats_labels=labels[400:700],
        losses=("all_ones", "runner_up"),
        strategy="binary",
        target_fpr=TARGET_FPR,
        progress=False,
    )
    n_params = len(list(digits_model.parameters()))
    names = [c["name"] for c in result.extractor.schema]
    assert sum(n.startswith("grad/runner_up/") for n in names) == n_params
    assert result.summary["n_stats"] == 300
    assert result.summary["losses"] == ["all_ones", "runner_up"]
    # The statistics come from the stats split, not the fit images.
    spec = result.extractor.to_dict()
    reference = FeatureExtractor(digits_model, losses=("all_ones", "runner_up"))
    assert spec == reference.fit(images[400:700], labels[400:700]).to_dict()
    assert spec != reference.fit(images[:200], labels[:200]).to_dict()
    path = write_bundle(result, digits_model, tmp_path / "b")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["feature_spec"]["losses"] == ["all_ones", "runner_up"]
    assert manifest["strategy"] == "binary"


def test_attribution_only_challenges_leave_detection_alone(
    fitted: FitResult,
    digits_model: nn.Module,
    fit_split: tuple[np.ndarray, np.ndarray],
    digits: tuple[np.ndarray, np.ndarray],
    test_split: tuple[np.ndarray, np.ndarray],
) -> None:
    """Sets only the kind head learns from: recorded in the summary, made from the first
    ``attribution_limit`` clean images, and the detection scores do not move."""
    images, labels = fit_split
    extra = [parse_spec("ood:source=smooth"), parse_spec("corruption:type=gaussian_blur")]
    result = fit_detector(
        digits_model,
        images,
        labels,
        [parse_spec(s) for s in FIT_SPECS],
        attribution_challenges=extra,
        attribution_limit=50,
        stats_images=digits[0][STATS_SLICE],
        stats_labels=digits[1][STATS_SLICE],
        target_fpr=TARGET_FPR,
        seed=3,
        progress=False,
    )
    assert result.summary["attribution_challenges"] == [
        {"spec": c.spec, "kind": c.kind} for c in extra
    ]
    assert result.summary["n_attribution_images"] == 50
    assert result.detector.n_attribution_extra_ == 100
    test = fitted.extractor.extract_images(test_split[0]).features
    np.testing.assert_array_equal(
        result.detector.predict_proba(test), fitted.detector.predict_proba(test)
    )
