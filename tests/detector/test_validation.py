"""Bad input to fit / predict is refused with specific exceptions and clear messages."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from detectors.detector import ReliabilityDetector
from tests.detector.synthetic import LOG_COLUMNS, make_features


@pytest.fixture(scope="module")
def small() -> tuple[np.ndarray, np.ndarray]:
    return make_features(np.random.default_rng(3), {"clean": 400, "ood": 60, "adversarial": 60})


def _with_nan(X: np.ndarray) -> np.ndarray:
    X = X.copy()
    X[7, 2] = np.nan
    return X


def test_fit_rejects_bad_features(small: tuple[np.ndarray, np.ndarray]) -> None:
    X, kinds = small
    det = ReliabilityDetector(log_columns=LOG_COLUMNS)
    with pytest.raises(ValueError, match=r"NaN/inf value.*row 7, column 2"):
        det.fit(_with_nan(X), kinds)
    X_inf = X.copy()
    X_inf[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN/inf"):
        det.fit(X_inf, kinds)
    with pytest.raises(ValueError, match="2-D"):
        det.fit(X[:, 0], kinds)
    with pytest.raises(TypeError, match="numeric"):
        det.fit(X.astype(str), kinds)
    with pytest.raises(ValueError, match="log_columns has 10 flags but X has 9"):
        det.fit(X[:, :9], kinds)


def test_fit_rejects_bad_kinds(small: tuple[np.ndarray, np.ndarray]) -> None:
    X, kinds = small
    det = ReliabilityDetector(log_columns=LOG_COLUMNS)
    bad = kinds.copy().astype(object)
    bad[3] = "adverserial"
    with pytest.raises(ValueError, match=r"unknown kind\(s\) \['adverserial'\]"):
        det.fit(X, bad)
    with pytest.raises(ValueError, match="519 labels but X has 520 rows"):
        det.fit(X, kinds[:-1])
    with pytest.raises(TypeError, match="strings"):
        det.fit(X, np.zeros(len(X)))
    with pytest.raises(ValueError, match="no 'clean' rows"):
        det.fit(X[kinds != "clean"], kinds[kinds != "clean"])
    with pytest.raises(ValueError, match="no challenge rows"):
        det.fit(X[kinds == "clean"], kinds[kinds == "clean"])


@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        ({"classifier": "svm"}, ValueError, "unknown classifier"),
        ({"strategy": "vote"}, ValueError, "unknown strategy"),
        ({"target_fpr": 0.0}, ValueError, r"target_fpr must be in \(0, 1\)"),
        ({"target_fpr": 1.5}, ValueError, "target_fpr"),
        ({"calibration_fraction": 1.0}, ValueError, "calibration_fraction"),
        ({"target_fpr": "5%"}, TypeError, "target_fpr must be a number"),
        ({"random_state": 0.5}, TypeError, "random_state"),
        ({"log_columns": [0, 1]}, TypeError, "boolean mask"),
    ],
)
def test_fit_rejects_bad_params(
    small: tuple[np.ndarray, np.ndarray], params: dict, error: type[Exception], match: str
) -> None:
    X, kinds = small
    with pytest.raises(error, match=match):
        ReliabilityDetector(**params).fit(X, kinds)


def test_too_few_clean_rows_to_split() -> None:
    X, kinds = make_features(np.random.default_rng(0), {"clean": 1, "ood": 5})
    with pytest.raises(ValueError, match="cannot be split"):
        ReliabilityDetector(log_columns=LOG_COLUMNS).fit(X, kinds)


def test_predict_rejects_bad_features(small: tuple[np.ndarray, np.ndarray]) -> None:
    X, kinds = small
    det = ReliabilityDetector(log_columns=LOG_COLUMNS).fit(X, kinds)
    for method in (det.predict_proba, det.predict, det.kind_scores, det.false_positive_rate):
        with pytest.raises(ValueError, match="11 features per row, the detector expects 10"):
            method(np.ones((2, 11)))
        with pytest.raises(ValueError, match="NaN/inf"):
            method(_with_nan(X))
        with pytest.raises(ValueError, match="no rows"):
            method(X[:0])


def test_unfitted_detector_refuses_to_score() -> None:
    with pytest.raises(NotFittedError):
        ReliabilityDetector().predict_proba(np.ones((1, 10)))
