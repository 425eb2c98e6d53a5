"""Square attack, L∞ (Andriushchenko et al., 2020): black-box random square search."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from art.attacks.evasion import SquareAttack
from art.estimators.classification import PyTorchClassifier

from detectors.challenges.art_attack import ArtAttack
from detectors.challenges.registry import ChallengeContext, register
from detectors.challenges.spec import ParamValue


@register
class Square(ArtAttack):
    """``square:eps=0.3,steps=300,p_init=0.8`` — uses model outputs only, no gradients.

    steps: query iterations per image (stops early once misclassified); p_init: initial
    fraction of pixels a square covers.
    """

    name: ClassVar[str] = "square"
    defaults: ClassVar[dict[str, ParamValue]] = {"eps": 0.3, "steps": 300, "p_init": 0.8}

    @property
    def stochastic(self) -> bool:
        return True

    def validate(self) -> None:
        self._require(0.0 < self._float("eps") <= 1.0, "eps must be in (0, 1]")
        self._require(self._int("steps") >= 1, "steps must be >= 1")
        self._require(0.0 < self._float("p_init") <= 1.0, "p_init must be in (0, 1]")

    def _attack(self, classifier: PyTorchClassifier, ctx: ChallengeContext) -> Any:
        return SquareAttack(
            classifier,
            norm=np.inf,
            eps=self._float("eps"),
            max_iter=self._int("steps"),
            p_init=self._float("p_init"),
            batch_size=ctx.batch_size,
            verbose=ctx.progress,
        )
