"""The KNN baseline (Sun et al. 2022), attacked through its torch copy."""

from __future__ import annotations

import math
from typing import Self

import numpy as np
import torch
from torch import Tensor

from detectors.adaptive.setup import AttackSetup
from detectors.adaptive.targets.base import AttackTarget
from detectors.adaptive.targets.feature_space import fit_and_calibrate, log_margin, penultimate
from detectors.adaptive.targets.registry import register_target
from detectors.evaluate.baselines import create


@register_target("knn")
class KNNTarget(AttackTarget):
    """Reference: the registered ``knn`` baseline (k-th nearest normalised clean feature);
    the copy takes the k-th smallest exact distance to the same bank. Margin
    log(score / threshold)."""

    def prepare(self, setup: AttackSetup, target_fpr: float) -> Self:
        self.model = setup.model
        self.baseline, self.threshold = fit_and_calibrate(create("knn"), setup, target_fpr)
        self.bank = torch.from_numpy(self.baseline.bank_)
        self.bank_sq = self.bank.square().sum(1)  # 1, or 0 for an all-zero feature row
        self.k = int(self.baseline.k_)
        return self

    def score(self, images: np.ndarray) -> np.ndarray:
        return self.baseline.score(self.model, images)

    def margin_of(self, scores: np.ndarray) -> np.ndarray:
        return log_margin(scores, self.threshold)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logits, feats = penultimate(self.model, x)
        f = feats.double()
        f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-300)
        # Squared distances by expansion: [B, N], never a [B, N, D] block.
        sq = f.square().sum(1, keepdim=True) + self.bank_sq - 2.0 * f @ self.bank.T
        sq = sq.clamp_min(1e-24)  # rounding can dip below 0; sqrt' stays finite
        kth = sq.topk(self.k, dim=1, largest=False).values[:, -1].sqrt()
        return logits, kth.clamp_min(1e-300).log() - math.log(self.threshold)
