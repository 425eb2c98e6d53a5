"""GradNorm (Huang, Geng & Li, NeurIPS 2021)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from detectors.evaluate.baselines.base import (
    Baseline,
    batches,
    check_batch_size,
    check_images,
    check_model,
    check_number,
    model_device,
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

    def score(self, model: nn.Module, images: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
        """float64 [N] in (−∞, 0]."""
        check_model(model)
        check_images(images)
        check_batch_size(batch_size)
        t = check_number(self.temperature, "temperature", positive=True)
        out: list[np.ndarray] = []
        with torch.no_grad():
            for x in batches(images, batch_size, model_device(model)):
                rec = forward_with_head(model, x)
                if not torch.equal(rec.head_output, rec.logits):
                    raise ValueError(
                        "GradNorm needs the model's logits to be the output of its last "
                        "nn.Linear (nothing applied after it)"
                    )
                z = rec.logits.double()
                u = (torch.softmax(z / t, dim=1) - 1.0 / z.shape[1]) / t
                norm = u.abs().sum(dim=1) * rec.features.double().abs().sum(dim=1)
                out.append((-norm).cpu().numpy())
        return np.concatenate(out)
