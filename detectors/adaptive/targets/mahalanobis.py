"""The Mahalanobis baseline (penultimate features), attacked through its torch copy."""

from __future__ import annotations

import math
from typing import Self

import numpy as np
from torch import Tensor

from detectors.adaptive.features import GaussianDistance
from detectors.adaptive.setup import AttackSetup
from detectors.adaptive.targets.base import AttackTarget
from detectors.adaptive.targets.feature_space import fit_and_calibrate, log_margin, penultimate
from detectors.adaptive.targets.registry import register_target
from detectors.evaluate.baselines import create
from detectors.features import Gaussians


@register_target("mahalanobis")
class MahalanobisTarget(AttackTarget):
    """Reference: the registered ``mahalanobis`` baseline; margin log(score / threshold)."""

    def prepare(self, setup: AttackSetup, target_fpr: float) -> Self:
        self.model = setup.model
        self.baseline, self.threshold = fit_and_calibrate(create("mahalanobis"), setup, target_fpr)
        b = self.baseline
        self.distance = GaussianDistance(Gaussians(b.means_, b.whitener_, b.classes_))
        return self

    def score(self, images: np.ndarray) -> np.ndarray:
        return self.baseline.score(self.model, images)

    def margin_of(self, scores: np.ndarray) -> np.ndarray:
        return log_margin(scores, self.threshold)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logits, feats = penultimate(self.model, x)
        d = self.distance.closest(feats.double())
        return logits, d.clamp_min(1e-300).log() - math.log(self.threshold)
