"""Energy score (Liu, Wang, Owens & Li, NeurIPS 2020)."""

from __future__ import annotations

import torch
from torch import nn

from detectors.evaluate.baselines.base import (
    Baseline,
    check_number,
    logits_of,
)
from detectors.evaluate.baselines.registry import register


@register("energy")
class Energy(Baseline):
    """Score = E(x) = −T·logsumexp(z/T): higher energy = more anomalous.

    Args:
        temperature: T > 0 (the paper uses 1).
    """

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = temperature

    def check_params(self) -> None:
        check_number(self.temperature, "temperature", positive=True)

    def score_batch(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """float64 [B]."""
        t = float(self.temperature)
        return -t * torch.logsumexp(logits_of(model, x).double() / t, dim=1)
