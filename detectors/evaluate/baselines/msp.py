"""MSP: negative maximum softmax probability (Hendrycks & Gimpel, ICLR 2017)."""

from __future__ import annotations

import torch
from torch import nn

from detectors.evaluate.baselines.base import (
    Baseline,
    logits_of,
)
from detectors.evaluate.baselines.registry import register


@register("msp")
class MaxSoftmax(Baseline):
    """Score = −max_c softmax(z)_c: confident predictions look in-distribution."""

    def score_batch(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """float64 [B] in [−1, −1/K]."""
        probs = torch.softmax(logits_of(model, x).double(), dim=1)
        return -probs.max(dim=1).values
