"""Threshold calibration: the achieved FPR on fresh clean rows is close to the target."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.detector import ReliabilityDetector, build_classifier, calibrate_threshold
from detectors.detector.weights import balanced_weights
from tests.detector.synthetic import LOG_COLUMNS, make_features


@pytest.fixture(scope="module")
def big_sets() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """4000 clean + 900 challenge rows to fit; 8000 fresh clean rows to measure the FPR."""
    rng = np.random.default_rng(5)
    X, kinds = make_features(rng, {"clean": 4000, "adversarial": 300, "ood": 300, "corrupted": 300})
    fresh, _ = make_features(rng, {"clean": 8000})
    return X, kinds, fresh


@pytest.mark.parametrize(
    ("strategy", "target"), [("per_kind", 0.05), ("per_kind", 0.01), ("multiclass", 0.10)]
)
def test_fresh_clean_fpr_is_close_to_target(
    big_sets: tuple[np.ndarray, np.ndarray, np.ndarray], strategy: str, target: float
) -> None:
    X, kinds, fresh = big_sets
    det = ReliabilityDetector(
        "logistic", strategy, target_fpr=target, calibration_fraction=0.5, log_columns=LOG_COLUMNS
    ).fit(X, kinds)
    assert det.n_calibration_ == 2000
    assert abs(det.calibration_fpr_ - target) <= 0.001  # 2000 rows: the quantile is exact
    # Sampling error of the quantile from 2000 rows is about ±0.5 points at 5 %.
    assert abs(det.false_positive_rate(fresh) - target) < 0.015


def test_heads_never_see_the_calibration_rows(
    big_sets: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    X, kinds, _ = big_sets
    det = ReliabilityDetector("logistic", "binary", log_columns=LOG_COLUMNS).fit(X, kinds)
    held = det.calibration_rows_
    assert len(held) == det.n_calibration_ == 1000 and len(np.unique(held)) == 1000
    assert np.all(kinds[held] == "clean")
    # The head equals one refitted on every row except the held-out ones ...
    keep = np.setdiff1d(np.arange(len(X)), held)
    ref = build_classifier("logistic", 0).fit(
        det.transform_.transform(X[keep]),
        (kinds[keep] != "clean").astype(int),
        logistic__sample_weight=balanced_weights(kinds[keep]),
    )
    np.testing.assert_allclose(det.heads_["challenge"][-1].coef_, ref[-1].coef_, atol=1e-6)
    # ... and the threshold is set on the held-out rows.
    assert np.mean(det.predict_proba(X[held]) >= det.threshold_) == det.calibration_fpr_
    assert abs(det.calibration_fpr_ - 0.05) < 0.002


def test_calibrate_threshold_quantile() -> None:
    scores = np.arange(100) / 100.0  # 0.00 .. 0.99
    threshold, fpr = calibrate_threshold(scores, 0.05)
    assert 0.94 < threshold <= 0.95
    assert fpr == 0.05
    assert np.mean(scores >= threshold) == fpr
