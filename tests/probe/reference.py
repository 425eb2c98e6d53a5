"""The one-sample-at-a-time reference the probe must match."""

from __future__ import annotations

import torch
from torch import nn

from detectors.losses import get_loss


def reference_features(
    model: nn.Module, x: torch.Tensor, names: list[str], loss: str = "all_ones"
) -> torch.Tensor:
    """[B, L]: for each sample alone, ‖∂J/∂θ_l‖² by torch.autograd.grad."""
    params = dict(model.named_parameters())
    selected = [params[n] for n in names]
    flags = [p.requires_grad for p in selected]
    rows = []
    try:
        for p in selected:
            p.requires_grad_(True)
        for i in range(x.shape[0]):
            with torch.enable_grad():
                j = get_loss(loss)(model(x[i : i + 1])).sum()
                grads = torch.autograd.grad(j, selected, allow_unused=True, materialize_grads=True)
            rows.append(torch.stack([g.double().pow(2).sum() for g in grads]))
    finally:
        for p, f in zip(selected, flags, strict=True):
            p.requires_grad_(f)
    return torch.stack(rows)
