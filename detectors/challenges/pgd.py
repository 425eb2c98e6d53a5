"""Projected Gradient Descent, L∞ (Madry et al., 2018): BIM from a random start."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from art.attacks.evasion import ProjectedGradientDescent
from art.estimators.classification import PyTorchClassifier

from detectors.challenges.bim import BIM
from detectors.challenges.registry import ChallengeContext, register
from detectors.challenges.spec import ParamValue


@register
class PGD(BIM):
    """``pgd:eps=0.3,eps_step=0.01,steps=40,random_init=true`` — Madry's MNIST setting.

    random_init starts from a uniform point in the eps-ball (the seed picks it). The
    parameters are BIM's (and checked alike) plus that start.
    """

    name: ClassVar[str] = "pgd"
    defaults: ClassVar[dict[str, ParamValue]] = {
        "eps": 0.3,
        "eps_step": 0.01,
        "steps": 40,
        "random_init": True,
    }

    @property
    def stochastic(self) -> bool:
        return self._bool("random_init")

    def _attack(self, classifier: PyTorchClassifier, ctx: ChallengeContext) -> Any:
        return ProjectedGradientDescent(
            classifier,
            norm=np.inf,
            eps=self._float("eps"),
            eps_step=self._float("eps_step"),
            max_iter=self._int("steps"),
            num_random_init=int(self._bool("random_init")),
            batch_size=ctx.batch_size,
            verbose=ctx.progress,
        )
