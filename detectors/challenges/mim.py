"""Momentum Iterative FGSM (Dong et al., 2018): BIM whose steps follow an accumulated,
L1-normalised gradient — a different path to the L∞ ball's surface than BIM or PGD."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from art.attacks.evasion import MomentumIterativeMethod
from art.estimators.classification import PyTorchClassifier

from detectors.challenges.art_attack import ArtAttack
from detectors.challenges.registry import ChallengeContext, register
from detectors.challenges.spec import ParamValue


@register
class MomentumIterative(ArtAttack):
    """``mim:eps=0.15,eps_step=0.015,steps=10,decay=1.0`` — L∞, [0, 1] pixel units."""

    name: ClassVar[str] = "mim"
    defaults: ClassVar[dict[str, ParamValue]] = {
        "eps": 0.3,
        "eps_step": 0.03,
        "steps": 10,
        "decay": 1.0,
    }

    def validate(self) -> None:
        eps, eps_step = self._float("eps"), self._float("eps_step")
        self._require(0.0 < eps <= 1.0, "eps must be in (0, 1]")
        self._require(0.0 < eps_step <= eps, "eps_step must be in (0, eps]")
        self._require(self._int("steps") >= 1, "steps must be >= 1")
        self._require(self._float("decay") >= 0.0, "decay must be >= 0")

    def _attack(self, classifier: PyTorchClassifier, ctx: ChallengeContext) -> Any:
        return MomentumIterativeMethod(
            classifier,
            norm=np.inf,
            eps=self._float("eps"),
            eps_step=self._float("eps_step"),
            decay=self._float("decay"),
            max_iter=self._int("steps"),
            batch_size=ctx.batch_size,
            verbose=ctx.progress,
        )
