"""Fast Gradient Sign Method (Goodfellow et al., 2015): one L∞ step of size ``eps``."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from art.attacks.evasion import FastGradientMethod
from art.estimators.classification import PyTorchClassifier

from detectors.challenges.art_attack import ArtAttack
from detectors.challenges.registry import ChallengeContext, register
from detectors.challenges.spec import ParamValue


@register
class FGSM(ArtAttack):
    """``fgsm:eps=0.2`` — eps: L∞ step in [0, 1] pixel units."""

    name: ClassVar[str] = "fgsm"
    defaults: ClassVar[dict[str, ParamValue]] = {"eps": 0.2}

    def validate(self) -> None:
        self._require(0.0 < self._float("eps") <= 1.0, "eps must be in (0, 1]")

    def _attack(self, classifier: PyTorchClassifier, ctx: ChallengeContext) -> Any:
        return FastGradientMethod(
            classifier, norm=np.inf, eps=self._float("eps"), batch_size=ctx.batch_size
        )
