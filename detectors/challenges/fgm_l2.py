"""Fast Gradient Method in L2 (Goodfellow et al., 2015; Miyato et al.'s L2 form): one step
of L2 length ``eps`` along the loss gradient — spread over every pixel, where FGSM's L∞
step moves each pixel by the same amount."""

from __future__ import annotations

from typing import Any, ClassVar

from art.attacks.evasion import FastGradientMethod
from art.estimators.classification import PyTorchClassifier

from detectors.challenges.art_attack import ArtAttack
from detectors.challenges.registry import ChallengeContext, register
from detectors.challenges.spec import ParamValue


@register
class FGML2(ArtAttack):
    """``fgm_l2:eps=3.0`` — eps: L2 length of the step, in [0, 1] pixel units."""

    name: ClassVar[str] = "fgm_l2"
    defaults: ClassVar[dict[str, ParamValue]] = {"eps": 3.0}

    def validate(self) -> None:
        self._require(self._float("eps") > 0.0, "eps must be > 0")

    def _attack(self, classifier: PyTorchClassifier, ctx: ChallengeContext) -> Any:
        return FastGradientMethod(
            classifier, norm=2, eps=self._float("eps"), batch_size=ctx.batch_size
        )
