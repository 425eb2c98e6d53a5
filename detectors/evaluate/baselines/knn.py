"""Deep nearest neighbours (Sun, Ming, Zhu & Li, ICML 2022).

The score is the distance from an input's L2-normalised penultimate features to its
k-th nearest neighbour among the normalised features of clean training inputs.
"""

from __future__ import annotations

from typing import Self

import numpy as np
from sklearn.exceptions import NotFittedError
from sklearn.neighbors import NearestNeighbors
from torch import nn

from detectors.evaluate.baselines.base import Baseline, check_width
from detectors.evaluate.baselines.mahalanobis import penultimate_features
from detectors.evaluate.baselines.registry import register

#: The paper's k for CIFAR-10, fitted on its 50,000 training images.
PAPER_K, PAPER_FIT_SIZE = 50, 50_000


def default_k(n_fit: int) -> int:
    """k for a fit set of ``n_fit`` images: the paper's k = 50 at 50,000 images, scaled in
    proportion to the fit set as the paper does when it subsamples ImageNet (k = 1000 on
    all of it, k = 10 on a 1% sample), at least 1. A fixed k = 50 on a 6,000-image fit set
    reaches past a class's nearest members into other classes."""
    return max(1, round(PAPER_K * n_fit / PAPER_FIT_SIZE))


def normalise(feats: np.ndarray) -> np.ndarray:
    """Rows of float [N, D] scaled to unit L2 norm (all-zero rows stay zero)."""
    norms = np.linalg.norm(feats, axis=1, keepdims=True)
    return feats / np.where(norms > 0, norms, 1.0)


@register("knn")
class KNN(Baseline):
    """Score = ‖ẑ − ẑ_(k)‖₂, ẑ = z/‖z‖ the normalised penultimate features and ẑ_(k)
    its k-th nearest normalised clean training feature (exact, brute-force search).

    Args:
        k: which neighbour (1 = nearest); None = ``default_k(N)`` for N fit images
            (50 on a CIFAR-10-sized fit set, as in the paper).

    Attributes (after ``fit``):
        k_: the k used; bank_: float64 [N, D], the normalised clean features.
    """

    needs_fit = True

    def __init__(self, k: int | None = None) -> None:
        self.k = k

    def _check_k(self) -> None:
        if self.k is None:
            return
        if isinstance(self.k, bool) or not isinstance(self.k, int | np.integer) or self.k < 1:
            raise ValueError(f"k must be a positive integer or None, got {self.k!r}")

    def fit(
        self,
        model: nn.Module,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        batch_size: int = 256,
    ) -> Self:
        """Store the normalised penultimate features of clean images float32 [N, C, H, W]
        (labels int64 [N] are checked but not used: the score is class-agnostic)."""
        super().fit(model, images, labels, batch_size=batch_size)
        self._check_k()
        k = default_k(len(images)) if self.k is None else int(self.k)
        if len(images) < k:
            raise ValueError(f"KNN with k={k} needs at least {k} fit images")
        self.k_ = k
        self.bank_ = normalise(penultimate_features(model, images, batch_size))
        self.index_ = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(self.bank_)
        return self

    def check_params(self) -> None:
        self._check_k()
        if not hasattr(self, "bank_"):
            raise NotFittedError("KNN is not fitted yet; call fit() on clean data first")

    def score_images(self, model: nn.Module, images: np.ndarray, batch_size: int) -> np.ndarray:
        """float64 [N] in [0, 2]: distance to the k-th nearest clean feature."""
        feats = penultimate_features(model, images, batch_size)
        check_width(feats, self.bank_.shape[1])
        dist, _ = self.index_.kneighbors(normalise(feats), n_neighbors=self.k_)
        return dist[:, -1].astype(np.float64)
