"""gradsentry's H: the bundle's detector, attacked through its torch copy."""

from __future__ import annotations

from typing import Self

import numpy as np
import torch
from torch import Tensor

from detectors.adaptive.detector import TorchDetector
from detectors.adaptive.features import TorchFeatures
from detectors.adaptive.setup import AttackSetup
from detectors.adaptive.targets.base import AttackTarget, batched_scores
from detectors.adaptive.targets.registry import register_target
from detectors.sentry import Sentry


@register_target("gradsentry")
class GradsentryTarget(AttackTarget):
    """Reference score: ``Sentry.check``'s P(challenging) (features from the probe, H from
    onnxruntime), flagged at the bundle's calibrated threshold. Margin: the log-odds of
    P minus those of the threshold, from ``TorchFeatures`` and ``TorchDetector``."""

    def prepare(self, setup: AttackSetup, target_fpr: float) -> Self:
        self.sentry = Sentry.load(setup.model, setup.bundle)
        self.features = TorchFeatures(self.sentry.extractor)
        self.detector = TorchDetector.from_bundle(self.sentry.bundle)
        self.threshold = self.detector.threshold
        return self

    def score(self, images: np.ndarray) -> np.ndarray:
        return batched_scores(lambda x: self.sentry.check(x).score, images)

    def margin_of(self, scores: np.ndarray) -> np.ndarray:
        p = np.clip(scores, 1e-300, 1 - 1e-16)
        return np.log(p) - np.log1p(-p) - self.detector.logit_threshold

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logits, feats = self.features(x)
        _, log_odds = self.detector(feats)
        return logits, log_odds - self.detector.logit_threshold


def flag_probability(target: GradsentryTarget, x: Tensor) -> Tensor:
    """P(challenging) [B] from the torch copy (for tests against the reference)."""
    with torch.no_grad():
        return target.detector(target.features(x)[1])[0]
