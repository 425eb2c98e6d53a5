"""Shared by the baselines that score the penultimate features: differentiable access to
them and threshold calibration on clean data."""

from __future__ import annotations

import numpy as np
from torch import Tensor, nn

from detectors.adaptive.setup import AttackSetup
from detectors.detector.calibration import calibrate_threshold
from detectors.evaluate.baselines.base import Baseline
from detectors.evaluate.baselines.last_linear import last_linear


def penultimate(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """x [B, ...] -> (logits [B, K], the last Linear's input [B, D]), both in the graph."""
    seen: list[Tensor] = []
    handle = last_linear(model).register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return logits, seen[0]


def fit_and_calibrate(
    baseline: Baseline, setup: AttackSetup, target_fpr: float
) -> tuple[Baseline, float]:
    """Fit ``baseline`` on ``setup.baseline_fit``; its threshold flags ``target_fpr`` of
    ``setup.calibration`` (clean data it was not fitted on)."""
    fit = setup.baseline_fit
    baseline.fit(setup.model, fit.images, fit.labels)
    clean = baseline.score(setup.model, setup.calibration.images)
    threshold, _ = calibrate_threshold(clean, target_fpr)
    return baseline, threshold


def log_margin(scores: np.ndarray, threshold: float) -> np.ndarray:
    """log(score) − log(threshold): a scale-free margin for positive distance scores."""
    return np.log(np.maximum(scores, 1e-300)) - np.log(threshold)
