"""Squared Frobenius norm of per-sample sums of outer products, by the cheaper exact route."""

from __future__ import annotations

import torch
from torch import Tensor


def outer_sum_sq_norm(a: Tensor, g: Tensor) -> Tensor:
    """‖Σ_t g_t a_tᵀ‖²_F per sample.

    a: [N, T, d] layer inputs (or unfolded patches), g: [N, T, p] output gradients.
    Returns [N]. Materialising the per-sample gradient costs ~T·d·p per sample; the
    "ghost" form ⟨a aᵀ, g gᵀ⟩ costs ~T²·(d+p). Both are exact; take the cheaper.
    """
    t, d, p = a.shape[1], a.shape[2], g.shape[2]
    if t * t * (d + p) < t * d * p:
        gram_a = torch.bmm(a, a.transpose(1, 2))  # [N, T, T]
        gram_g = torch.bmm(g, g.transpose(1, 2))  # [N, T, T]
        return (gram_a * gram_g).sum(dim=(1, 2))
    per_sample = torch.bmm(g.transpose(1, 2), a)  # [N, p, d]
    return per_sample.pow(2).sum(dim=(1, 2))


def sq_norm(x: Tensor) -> Tensor:
    """Σ x² over every dim but the first: [N, ...] -> [N]."""
    # One fused reduction pass (pow + sum makes two, and pow takes a slow path on the
    # large per-sample gradients).
    return torch.linalg.vector_norm(x.reshape(x.shape[0], -1), dim=1).square()
