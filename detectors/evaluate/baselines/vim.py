"""ViM: virtual-logit matching (Wang, Li, Feng & Zhang, CVPR 2022).

Penultimate features x are centred at o = −W⁺b (where the head's logits vanish); the
principal subspace of clean training features is kept, and the norm of the residual
outside it, scaled by α, becomes a virtual logit that competes with the real ones.
"""

from __future__ import annotations

from typing import Self

import numpy as np
import torch
from scipy.special import logsumexp
from sklearn.exceptions import NotFittedError
from torch import nn

from detectors.evaluate.baselines.base import Baseline, batches, check_width, model_device
from detectors.evaluate.baselines.last_linear import forward_with_head, last_linear
from detectors.evaluate.baselines.registry import register


def head_features(
    model: nn.Module, images: np.ndarray, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(penultimate features float64 [N, D], logits float64 [N, K]), checking that the
    logits are the last Linear's output (ViM's origin and logits come from that head)."""
    feats, logits = [], []
    with torch.no_grad():
        for x in batches(images, batch_size, model_device(model)):
            rec = forward_with_head(model, x)
            if not torch.equal(rec.head_output, rec.logits):
                raise ValueError(
                    "ViM needs the model's logits to be the output of its last "
                    "nn.Linear (nothing applied after it)"
                )
            feats.append(rec.features.double().cpu().numpy())
            logits.append(rec.logits.double().cpu().numpy())
    return np.concatenate(feats), np.concatenate(logits)


#: Eigenvalues at most this fraction of the largest count as null (no clean variance).
NULL_RTOL = 1e-12


@register("vim")
class ViM(Baseline):
    """Score = α·‖(x − o) R‖₂ − logsumexp(z): the virtual logit minus the energy's
    logsumexp, i.e. the log-odds of the virtual (OOD) class in softmax([z, vlogit]).

    R [D, D−d] spans the complement of the top-d eigenvectors of the uncentred (about o)
    covariance of the clean features; α = mean max logit / mean residual norm on them.

    Features that never vary on the clean images (dead ReLU units: 72 of the MNIST demo's
    128) span a null space of that covariance. It must lie wholly in R: a cut through it
    is LAPACK's arbitrary choice of basis, and an R inside it has no clean residual, so α
    is float rounding. The rule below therefore counts the rank r, not D, and d < r.

    Args:
        dim: principal dimension d < r; None = the reference code's rule applied to the
            rank r of the clean features: 1000 for r ≥ 2048, 512 for r ≥ 768, else r // 2.

    Attributes (after ``fit``):
        origin_: float64 [D]; residual_: float64 [D, D − d]; alpha_: float.
    """

    needs_fit = True

    def __init__(self, dim: int | None = None) -> None:
        self.dim = dim

    @staticmethod
    def default_dim(d: int) -> int:
        """The principal dimension ViM's reference code uses for feature width d."""
        return 1000 if d >= 2048 else 512 if d >= 768 else d // 2

    def fit(
        self,
        model: nn.Module,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        batch_size: int = 256,
    ) -> Self:
        """Fit o, the principal subspace and α on clean images float32 [N, C, H, W]."""
        super().fit(model, images, labels, batch_size=batch_size)
        feats, logits = head_features(model, images, batch_size)
        width = feats.shape[1]
        dim = self.dim
        if dim is not None and (
            isinstance(dim, bool) or not isinstance(dim, int | np.integer) or not 0 < dim < width
        ):
            raise ValueError(
                f"dim must be an integer in [1, {width - 1}] for {width}-d features, got {dim!r}"
            )
        head = last_linear(model)
        w = head.weight.detach().double().cpu().numpy()
        b = (
            head.bias.detach().double().cpu().numpy()
            if head.bias is not None
            else np.zeros(w.shape[0])
        )
        self.origin_ = -np.linalg.pinv(w) @ b
        centred = feats - self.origin_
        eigval, eigvec = np.linalg.eigh(centred.T @ centred / len(feats))  # ascending
        # Null directions sit at float64 rounding of the largest (~1e-16 of it); the MNIST
        # demo's smallest real one is at 2e-10 of it.
        rank = int(np.sum(eigval > eigval[-1] * NULL_RTOL))
        if dim is None:
            dim = self.default_dim(rank)
        if not 0 < dim < rank:
            raise ValueError(
                f"the clean features span {rank} of their {width} dimensions: dim must be in "
                f"[1, {rank - 1}], got {dim}"
            )
        self.residual_ = np.ascontiguousarray(eigvec[:, : width - dim])
        residual_norm = np.linalg.norm(centred @ self.residual_, axis=1)
        if residual_norm.mean() <= 0:
            raise ValueError("the clean features have no residual outside the principal space")
        self.alpha_ = float(logits.max(axis=1).mean() / residual_norm.mean())
        return self

    def check_params(self) -> None:
        if not hasattr(self, "residual_"):
            raise NotFittedError("ViM is not fitted yet; call fit() on clean data first")

    def score_images(self, model: nn.Module, images: np.ndarray, batch_size: int) -> np.ndarray:
        """float64 [N]: virtual logit minus logsumexp of the real logits."""
        feats, logits = head_features(model, images, batch_size)
        check_width(feats, self.origin_.shape[0])
        vlogit = self.alpha_ * np.linalg.norm((feats - self.origin_) @ self.residual_, axis=1)
        return vlogit - logsumexp(logits, axis=1)
