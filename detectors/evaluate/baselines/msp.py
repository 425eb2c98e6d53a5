"""MSP: negative maximum softmax probability (Hendrycks & Gimpel, ICLR 2017)."""

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
    logits_of,
    model_device,
)
from detectors.evaluate.baselines.registry import register


@register("msp")
class MaxSoftmax(Baseline):
    """Score = −max_c softmax(z)_c: confident predictions look in-distribution."""

    def score(self, model: nn.Module, images: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
        """float64 [N] in [−1, −1/K]."""
        check_model(model)
        check_images(images)
        check_batch_size(batch_size)
        out: list[np.ndarray] = []
        with torch.no_grad():
            for x in batches(images, batch_size, model_device(model)):
                probs = torch.softmax(logits_of(model, x).double(), dim=1)
                out.append((-probs.max(dim=1).values).cpu().numpy())
        return np.concatenate(out)
