"""Energy score (Liu, Wang, Owens & Li, NeurIPS 2020)."""

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
    logits_of,
    model_device,
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

    def score(self, model: nn.Module, images: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
        """float64 [N]."""
        check_model(model)
        check_images(images)
        check_batch_size(batch_size)
        t = check_number(self.temperature, "temperature", positive=True)
        out: list[np.ndarray] = []
        with torch.no_grad():
            for x in batches(images, batch_size, model_device(model)):
                z = logits_of(model, x).double()
                out.append((-t * torch.logsumexp(z / t, dim=1)).cpu().numpy())
        return np.concatenate(out)
