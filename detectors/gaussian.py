"""Class-conditional Gaussians with one tied covariance: fit, and distance to the closest mean.

NumPy only, so that serving (the activation-distance features) needs neither SciPy nor
scikit-learn; the Mahalanobis baseline uses the same two functions.
"""

from __future__ import annotations

import numpy as np


def fit_tied_gaussian(
    feats: np.ndarray, labels: np.ndarray, rcond: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class means and a whitening factor of the tied covariance's pseudo-inverse.

    feats: float64 [N, D]; labels: int [N]. Returns (classes int64 [K], means float64
    [K, D], whitener float64 [D, r]) with Σ⁺ = W Wᵀ over the r directions whose variance
    exceeds rcond·max (default D·machine epsilon, NumPy's rank rule).
    """
    classes, inverse = np.unique(labels, return_inverse=True)
    means = np.stack([feats[inverse == k].mean(axis=0) for k in range(len(classes))])
    centred = feats - means[inverse]
    cov = centred.T @ centred / len(feats)
    eigval, eigvec = np.linalg.eigh(cov)
    cut = rcond if rcond is not None else cov.shape[0] * np.finfo(np.float64).eps
    keep = eigval > cut * max(float(eigval.max()), 0.0)
    if not keep.any():
        raise ValueError("the fit features have zero variance; cannot fit a covariance")
    # C order, as a bundle's JSON gives it back: BLAS may sum a Fortran-ordered operand in
    # another order, and fit-time features must equal served ones bit for bit.
    whitener = np.ascontiguousarray(eigvec[:, keep] / np.sqrt(eigval[keep]))
    return classes.astype(np.int64), means, whitener


def min_class_distance(feats: np.ndarray, means: np.ndarray, whitener: np.ndarray) -> np.ndarray:
    """float64 [N]: Mahalanobis distance of each row of feats [N, D] to its closest mean."""
    white, centres = feats @ whitener, means @ whitener
    # One class at a time: [N, r] differences, never an [N, K, r] block.
    squared = np.stack([np.square(white - c).sum(axis=1) for c in centres], axis=1)
    return np.sqrt(squared.min(axis=1))
