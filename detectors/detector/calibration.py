"""Threshold calibration at a target false-positive rate on held-out clean rows."""

from __future__ import annotations

import numpy as np


class CalibrationWarning(UserWarning):
    """Too few held-out clean rows for the threshold to pin down the requested FPR."""


# Below this many expected false positives among the calibration rows the quantile is noise.
MIN_EXPECTED_FALSE_POSITIVES = 5


def calibrate_threshold(clean_scores: np.ndarray, target_fpr: float) -> tuple[float, float]:
    """Threshold flagging about ``target_fpr`` of clean rows (flagged = score ≥ threshold).

    Args:
        clean_scores: P(challenging) float [M] of held-out clean rows, M ≥ 1.
        target_fpr: in (0, 1).
    Returns:
        (threshold = the (1 − target_fpr) quantile of the scores, FPR it achieves on them).
    """
    scores = np.asarray(clean_scores, dtype=np.float64)
    threshold = float(np.quantile(scores, 1.0 - target_fpr))
    return threshold, float(np.mean(scores >= threshold))
