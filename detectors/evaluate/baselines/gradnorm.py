"""GradNorm (Huang, Geng & Li, NeurIPS 2021)."""

from __future__ import annotations

import torch
from torch import nn

from detectors.evaluate.baselines.base import (
    Baseline,
    check_number,
)
from detectors.evaluate.baselines.last_linear import forward_with_head
from detectors.evaluate.baselines.registry import register


@register("gradnorm")
class GradNorm(Baseline):
    """Score = −‖∇_W KL(u ‖ softmax(z/T))‖₁, W the last Linear layer's weight.

    With z = W a + b the per-sample gradient is the outer product
    ∇_W = u aᵀ, u = (softmax(z/T) − 1/K)/T, so its entrywise L1 norm is ‖u‖₁·‖a‖₁:
    exact, one forward pass, no backward. (KL(u ‖ p) = −(1/K)·Σ_c log p_c − log K; the
    constant has no gradient.) In-distribution inputs have larger norms,
    hence the minus sign.

    Args:
        temperature: T > 0 (paper: 1).

    Raises (at score time):
        ValueError: the model's logits are not the last Linear layer's output, so the
            closed form would not be the gradient of the loss.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = temperature

    def check_params(self) -> None:
        check_number(self.temperature, "temperature", positive=True)

    def score_batch(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """float64 [B] in (−∞, 0]."""
        rec = forward_with_head(model, x)
        if not torch.equal(rec.head_output, rec.logits):
            raise ValueError(
                "GradNorm needs the model's logits to be the output of its last "
                "nn.Linear (nothing applied after it)"
            )
        t = float(self.temperature)
        z = rec.logits.double()
        u = (torch.softmax(z / t, dim=1) - 1.0 / z.shape[1]) / t
        return -(u.abs().sum(dim=1) * rec.features.double().abs().sum(dim=1))
