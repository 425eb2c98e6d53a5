"""Threshold-free detection metrics for one clean set against one challenge set.

Convention: a score is "higher = more likely challenging"; challenge inputs are the
positives, clean in-distribution inputs the negatives.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

#: The true-positive rate at which ``fpr_at_95_tpr`` is read off the ROC curve.
TARGET_TPR = 0.95


@dataclass(frozen=True)
class DetectionMetrics:
    """Detection quality of a score; every field lies in [0, 1].

    Attributes:
        auroc: area under the ROC curve (0.5 = chance, 1 = perfect).
        aupr: average precision with the challenge inputs as positives.
        fpr_at_95_tpr: false-positive rate at the first threshold reaching 95% TPR
            (lower is better).
        detection_accuracy: max over thresholds of 1 − ½(FPR + FNR) (Liang et al. 2018).
    """

    auroc: float
    aupr: float
    fpr_at_95_tpr: float
    detection_accuracy: float

    def to_dict(self) -> dict[str, float]:
        """Plain ``{field: float}``, JSON-serialisable."""
        return {k: float(v) for k, v in asdict(self).items()}


def _as_scores(scores: np.ndarray, what: str) -> np.ndarray:
    """Validate one score array and return it as float64 [n]."""
    arr = np.asarray(scores)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array of scores, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{what} is empty: need at least one score")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(f"{what} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if np.isnan(arr).any():
        raise ValueError(f"{what} contains {int(np.isnan(arr).sum())} NaN score(s)")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} contains infinite score(s)")
    return arr


def labelled_scores(
    clean_scores: np.ndarray, challenge_scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Validate and stack the two sets for scikit-learn.

    Returns:
        (y_true int64 [n0 + n1] with 1 = challenge, y_score float64 [n0 + n1]).
    """
    neg = _as_scores(clean_scores, "clean_scores")
    pos = _as_scores(challenge_scores, "challenge_scores")
    y_true = np.concatenate([np.zeros(neg.size, np.int64), np.ones(pos.size, np.int64)])
    return y_true, np.concatenate([neg, pos])


def detection_metrics(clean_scores: np.ndarray, challenge_scores: np.ndarray) -> DetectionMetrics:
    """AUROC, AUPR, FPR@95%TPR and detection accuracy of a score.

    Args:
        clean_scores: float [n0], scores of clean in-distribution inputs (negatives).
        challenge_scores: float [n1], scores of challenge inputs (positives).

    Raises:
        ValueError: an array is empty, not 1-D, not numeric, or holds NaN/inf.
    """
    y_true, y_score = labelled_scores(clean_scores, challenge_scores)
    # Keep every threshold: the first one reaching the target TPR must not be dropped.
    fpr, tpr, _ = roc_curve(y_true, y_score, drop_intermediate=False)
    first = int(np.argmax(tpr >= TARGET_TPR))  # tpr ends at 1.0, so a hit always exists
    return DetectionMetrics(
        auroc=float(roc_auc_score(y_true, y_score)),
        aupr=float(average_precision_score(y_true, y_score)),
        fpr_at_95_tpr=float(fpr[first]),
        detection_accuracy=float(np.max(1.0 - 0.5 * (fpr + (1.0 - tpr)))),
    )
