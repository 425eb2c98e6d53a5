"""Mahalanobis distance on penultimate features (Lee, Lee, Lee & Shin, NeurIPS 2018).

Class-conditional Gaussians with one shared (tied) covariance, fitted on clean data;
the score is the distance to the closest class mean. This is the feature-space score
of the paper without its input preprocessing and layer ensemble.
"""

from __future__ import annotations

from typing import Self

import numpy as np
import torch
from sklearn.exceptions import NotFittedError
from torch import nn

from detectors.evaluate.baselines.base import (
    Baseline,
    batches,
    check_number,
    check_width,
    model_device,
)
from detectors.evaluate.baselines.last_linear import forward_with_head
from detectors.evaluate.baselines.registry import register
from detectors.gaussian import fit_tied_gaussian, min_class_distance


def penultimate_features(model: nn.Module, images: np.ndarray, batch_size: int) -> np.ndarray:
    """The last ``nn.Linear``'s input for every image: float64 [N, D]."""
    out: list[np.ndarray] = []
    with torch.no_grad():
        for x in batches(images, batch_size, model_device(model)):
            out.append(forward_with_head(model, x).features.double().cpu().numpy())
    return np.concatenate(out)


@register("mahalanobis")
class Mahalanobis(Baseline):
    """Score = min_c sqrt((a − μ_c)ᵀ Σ⁺ (a − μ_c)), a the penultimate features.

    Σ⁺ is the pseudo-inverse of the tied covariance: eigen-directions with variance
    at or below ``rcond``·(largest eigenvalue) are dropped (ReLU features often have
    dead units, so Σ is singular). It is kept factored as a whitening matrix
    W [D, r] with Σ⁺ = W Wᵀ, so distances are Euclidean distances after whitening.

    Args:
        rcond: relative eigenvalue cut-off; None = D·machine epsilon (NumPy's rank rule).

    Attributes (after ``fit``):
        classes_: int64 [K'], the labels seen in fit.
        means_: float64 [K', D], class means of the penultimate features.
        whitener_: float64 [D, r], r = rank kept.
    """

    needs_fit = True

    def __init__(self, rcond: float | None = None) -> None:
        self.rcond = rcond

    def fit(
        self,
        model: nn.Module,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        batch_size: int = 256,
    ) -> Self:
        """Fit class means and the tied covariance on clean images float32 [N, C, H, W]
        with their true labels int64 [N]."""
        super().fit(model, images, labels, batch_size=batch_size)  # the shared input checks
        if self.rcond is not None:
            check_number(self.rcond, "rcond", positive=False)
            if self.rcond >= 1:
                raise ValueError(f"rcond must be < 1, got {self.rcond!r}")
        if len(images) < 2:
            raise ValueError("Mahalanobis needs at least 2 fit images to estimate a covariance")
        feats = penultimate_features(model, images, batch_size)
        self.classes_, self.means_, self.whitener_ = fit_tied_gaussian(feats, labels, self.rcond)
        return self

    def check_params(self) -> None:
        if not hasattr(self, "whitener_"):
            raise NotFittedError("Mahalanobis is not fitted yet; call fit() on clean data first")

    def score_images(self, model: nn.Module, images: np.ndarray, batch_size: int) -> np.ndarray:
        """float64 [N] >= 0: distance to the closest class mean."""
        feats = penultimate_features(model, images, batch_size)
        check_width(feats, self.means_.shape[1])
        return min_class_distance(feats, self.means_, self.whitener_)
