"""DeepFool (Moosavi-Dezfooli et al., 2016): steps to the nearest linearised boundary."""

from __future__ import annotations

from typing import Any, ClassVar

from art.attacks.evasion import DeepFool
from art.estimators.classification import PyTorchClassifier

from detectors.challenges.art_attack import ArtAttack
from detectors.challenges.registry import ChallengeContext, register
from detectors.challenges.spec import ParamValue


@register
class DeepFoolAttack(ArtAttack):
    """``deepfool:steps=50,overshoot=0.02,candidates=10``.

    overshoot: relative step past the boundary; candidates: how many top classes'
    gradients are taken per step (all ten for MNIST; fewer is faster on many classes).
    """

    name: ClassVar[str] = "deepfool"
    defaults: ClassVar[dict[str, ParamValue]] = {"steps": 50, "overshoot": 0.02, "candidates": 10}

    def validate(self) -> None:
        self._require(self._int("steps") >= 1, "steps must be >= 1")
        self._require(self._float("overshoot") >= 0.0, "overshoot must be >= 0")
        self._require(self._int("candidates") >= 2, "candidates must be >= 2")

    def _attack(self, classifier: PyTorchClassifier, ctx: ChallengeContext) -> Any:
        return DeepFool(
            classifier,
            max_iter=self._int("steps"),
            epsilon=self._float("overshoot"),
            nb_grads=min(self._int("candidates"), classifier.nb_classes),
            batch_size=ctx.batch_size,
            verbose=ctx.progress,
        )
