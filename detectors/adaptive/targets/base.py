"""The attack-target contract: a detector with a threshold, its reference scores and a
differentiable copy of them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Self

import numpy as np
import torch
from torch import Tensor

from detectors.adaptive.setup import AttackSetup


class AttackTarget(ABC):
    """One detector under attack.

    ``prepare(setup)`` loads or fits it and sets ``threshold`` (flagged = score ≥
    threshold). ``score`` is the reference: what the product (the served detector, or the
    registered baseline) computes, used for every reported figure. ``forward`` is the
    attacker's differentiable copy; its margin ``d`` is ``margin_of(score)``: > 0 flagged.
    """

    name: ClassVar[str] = ""
    threshold: float

    @abstractmethod
    def prepare(self, setup: AttackSetup, target_fpr: float) -> Self:
        """Load or fit on ``setup``; thresholds calibrated at ``target_fpr`` where needed."""

    @abstractmethod
    def score(self, images: np.ndarray) -> np.ndarray:
        """images float32 [N, C, H, W] -> reference scores float64 [N] (higher = flagged)."""

    @abstractmethod
    def margin_of(self, scores: np.ndarray) -> np.ndarray:
        """float64 [N]: the margin ``forward`` computes, from reference scores."""

    @abstractmethod
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x float32 [B, C, H, W] -> (logits [B, K], margin float64 [B]), differentiable."""


def batched_scores(fn, images: np.ndarray, batch_size: int = 250) -> np.ndarray:
    """Apply ``fn(x float32 tensor [b, ...]) -> float [b]`` in batches; float64 [N]."""
    out = [
        np.asarray(fn(torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size]))))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out).astype(np.float64)
