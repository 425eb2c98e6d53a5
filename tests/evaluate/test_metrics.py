"""detection_metrics: hand-computed cases, brute-force references and input checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score

from detectors.evaluate.metrics import DetectionMetrics, detection_metrics


def _brute_force(clean: np.ndarray, challenge: np.ndarray) -> tuple[float, float, float]:
    """(AUROC by pair counting, FPR@95%TPR, detection accuracy) over every threshold."""
    diff = challenge[:, None] - clean[None, :]
    auroc = float(np.mean((diff > 0) + 0.5 * (diff == 0)))
    thresholds = np.append(np.unique(np.concatenate([clean, challenge])), np.inf)
    tpr = np.array([(challenge >= t).mean() for t in thresholds])
    fpr = np.array([(clean >= t).mean() for t in thresholds])
    fpr95 = float(fpr[tpr >= 0.95].min())
    det_acc = float(np.max(1 - 0.5 * (fpr + 1 - tpr)))
    return auroc, fpr95, det_acc


def test_perfect_separation() -> None:
    m = detection_metrics(np.array([0.0, 1.0, 2.0]), np.array([3.0, 4.0, 5.0]))
    assert m == DetectionMetrics(auroc=1.0, aupr=1.0, fpr_at_95_tpr=0.0, detection_accuracy=1.0)


def test_inverted_scores() -> None:
    m = detection_metrics(np.array([3.0, 4.0, 5.0]), np.array([0.0, 1.0, 2.0]))
    assert m.auroc == 0.0
    # Positives ranked 4th-6th: precisions 1/4, 2/5, 3/6 at recalls 1/3, 2/3, 1.
    assert m.aupr == pytest.approx((1 / 4 + 2 / 5 + 3 / 6) / 3)
    assert m.fpr_at_95_tpr == 1.0
    assert m.detection_accuracy == 0.5  # no threshold beats "flag nothing"


def test_all_scores_tied() -> None:
    m = detection_metrics(np.full(4, 7.0), np.full(2, 7.0))
    assert m.auroc == 0.5
    assert m.aupr == pytest.approx(2 / 6)  # the positive rate
    assert m.fpr_at_95_tpr == 1.0
    assert m.detection_accuracy == 0.5


def test_partial_ties_by_hand() -> None:
    clean = np.array([0.0, 1.0, 1.0, 2.0])
    challenge = np.array([1.0, 2.0, 3.0])
    m = detection_metrics(clean, challenge)
    # Pairs won (ties count 1/2): 1 -> 2, 2 -> 3.5, 3 -> 4, of 12.
    assert m.auroc == pytest.approx(9.5 / 12)
    # Thresholds 3, 2, 1: precision 1, 2/3, 1/2 at recall 1/3, 2/3, 1.
    assert m.aupr == pytest.approx((1 + 2 / 3 + 1 / 2) / 3)
    # TPR reaches 1 only at threshold 1, where 3 of 4 clean scores are flagged.
    assert m.fpr_at_95_tpr == pytest.approx(0.75)
    # Best threshold is 2: TPR 2/3, FPR 1/4.
    assert m.detection_accuracy == pytest.approx(1 - 0.5 * (1 / 4 + 1 / 3))


def test_fpr_is_read_at_first_threshold_reaching_95_percent() -> None:
    # 20 positives: the 19th (TPR = 0.95) is reached before any clean score is passed.
    clean = np.array([0.0, 0.5, 10.5])
    challenge = np.concatenate([np.arange(1.0, 20.0), [-1.0]])
    m = detection_metrics(clean, challenge)
    assert m.fpr_at_95_tpr == pytest.approx(1 / 3)  # only the 10.5 clean score is above 1


def test_fpr_at_95_keeps_collinear_roc_points() -> None:
    # ROC points (0, .9), (.1, .95), (.2, 1) are collinear; the middle one is the answer.
    challenge = np.concatenate([np.full(18, 10.0), [5.0, 4.0]])
    clean = np.concatenate([[5.0, 4.0], np.zeros(8)])
    assert detection_metrics(clean, challenge).fpr_at_95_tpr == pytest.approx(0.1)


def test_matches_sklearn_on_random_scores() -> None:
    rng = np.random.default_rng(0)
    clean, challenge = rng.normal(0, 1, 300), rng.normal(1, 1, 200)
    m = detection_metrics(clean, challenge)
    y = np.r_[np.zeros(300), np.ones(200)]
    s = np.r_[clean, challenge]
    assert m.auroc == pytest.approx(roc_auc_score(y, s))
    assert m.aupr == pytest.approx(average_precision_score(y, s))
    auroc, fpr95, det_acc = _brute_force(clean, challenge)
    assert (m.auroc, m.fpr_at_95_tpr, m.detection_accuracy) == pytest.approx(
        (auroc, fpr95, det_acc)
    )
    assert 0.7 < m.auroc < 0.85  # sanity: one standard deviation apart


@settings(max_examples=60, deadline=None)
@given(
    clean=st.lists(st.integers(-5, 5), min_size=1, max_size=25),
    challenge=st.lists(st.integers(-5, 5), min_size=1, max_size=25),
)
def test_matches_brute_force_with_many_ties(clean: list[int], challenge: list[int]) -> None:
    c, x = np.array(clean, float), np.array(challenge, float)
    m = detection_metrics(c, x)
    auroc, fpr95, det_acc = _brute_force(c, x)
    assert m.auroc == pytest.approx(auroc)
    assert m.fpr_at_95_tpr == pytest.approx(fpr95)
    assert m.detection_accuracy == pytest.approx(det_acc)
    assert 0.0 <= m.aupr <= 1.0


def test_integer_and_float32_inputs_are_accepted() -> None:
    m = detection_metrics(np.array([0, 1], np.int64), np.array([2, 3], np.float32))
    assert m.auroc == 1.0
    assert m.to_dict() == {
        "auroc": 1.0,
        "aupr": 1.0,
        "fpr_at_95_tpr": 0.0,
        "detection_accuracy": 1.0,
    }


@pytest.mark.parametrize(
    ("clean", "challenge", "message"),
    [
        (np.array([]), np.array([1.0]), "clean_scores is empty"),
        (np.array([1.0]), np.array([]), "challenge_scores is empty"),
        (np.array([1.0, np.nan]), np.array([1.0]), "NaN"),
        (np.array([1.0]), np.array([np.nan, np.nan]), "2 NaN"),
        (np.array([1.0]), np.array([np.inf]), "infinite"),
        (np.ones((2, 2)), np.array([1.0]), "1-D"),
        (np.array(["a"]), np.array([1.0]), "numeric"),
    ],
)
def test_invalid_scores_raise(clean: np.ndarray, challenge: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        detection_metrics(clean, challenge)
