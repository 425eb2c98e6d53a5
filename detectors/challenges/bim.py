"""Basic Iterative Method (Kurakin et al., 2017): iterated FGSM inside an L∞ ball."""

from __future__ import annotations

from typing import Any, ClassVar

from art.attacks.evasion import BasicIterativeMethod
from art.estimators.classification import PyTorchClassifier

from detectors.challenges.art_attack import ArtAttack
from detectors.challenges.registry import ChallengeContext, register
from detectors.challenges.spec import ParamValue


@register
class BIM(ArtAttack):
    """``bim:eps=0.2,eps_step=0.02,steps=20`` — L∞ radius, step size, iterations."""

    name: ClassVar[str] = "bim"
    defaults: ClassVar[dict[str, ParamValue]] = {"eps": 0.2, "eps_step": 0.02, "steps": 20}

    def validate(self) -> None:
        eps, eps_step, steps = self._float("eps"), self._float("eps_step"), self._int("steps")
        self._require(0.0 < eps <= 1.0, "eps must be in (0, 1]")
        self._require(0.0 < eps_step <= eps, "eps_step must be in (0, eps]")
        self._require(steps >= 1, "steps must be >= 1")

    def _attack(self, classifier: PyTorchClassifier, ctx: ChallengeContext) -> Any:
        return BasicIterativeMethod(
            classifier,
            eps=self._float("eps"),
            eps_step=self._float("eps_step"),
            max_iter=self._int("steps"),
            batch_size=ctx.batch_size,
            verbose=ctx.progress,
        )
