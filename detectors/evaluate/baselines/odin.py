"""ODIN: temperature scaling + input preprocessing (Liang, Li & Srikant, ICLR 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from detectors.evaluate.baselines.base import (
    Baseline,
    check_number,
    logits_of,
)
from detectors.evaluate.baselines.registry import register


@register("odin")
class Odin(Baseline):
    """Score = −max_c softmax(f(x̃)/T)_c with x̃ = x − ε·sign(∇ₓ CE(f(x)/T, ŷ)).

    The step raises the tempered softmax score of the predicted class ŷ; it raises it
    more for in-distribution inputs than for OOD ones, which widens the gap. The
    perturbation is taken in the model's input space ([0, 1] pixels; any normalisation
    lives inside the model) and is not clipped, as in the reference implementation.

    Args:
        temperature: T > 0 (paper: 1000).
        epsilon: ε >= 0, perturbation size in input units (0 disables preprocessing).
    """

    def __init__(self, temperature: float = 1000.0, epsilon: float = 0.0014) -> None:
        self.temperature = temperature
        self.epsilon = epsilon

    def check_params(self) -> None:
        check_number(self.temperature, "temperature", positive=True)
        check_number(self.epsilon, "epsilon", positive=False)

    def score_batch(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """float64 [B] in [−1, −1/K]."""
        t, eps = float(self.temperature), float(self.epsilon)
        x_tilde = self._preprocess(model, x, t, eps)
        probs = torch.softmax(logits_of(model, x_tilde).double() / t, dim=1)
        return -probs.max(dim=1).values

    @staticmethod
    def _preprocess(model: nn.Module, x: torch.Tensor, t: float, eps: float) -> torch.Tensor:
        """x̃ [B, C, H, W]; the gradient is taken w.r.t. the input only (no ``.grad``)."""
        if eps == 0:
            return x
        # Works even when the caller is inside no_grad() or inference_mode(); the clone
        # makes a normal (non-inference) tensor that autograd can differentiate.
        with torch.inference_mode(False), torch.enable_grad():
            x = x.clone().requires_grad_(True)
            z = logits_of(model, x) / t
            # Sum, not mean: per-sample losses stay independent of the batch size.
            loss = F.cross_entropy(z, z.argmax(dim=1), reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)
        return (x - eps * grad.sign()).detach()
