"""Carlini-Wagner L2 (2017): the smallest L2 perturbation that flips the prediction.

Defaults are cut down for CPU speed (tens of ms per 28×28 image): few binary-search
steps over the trade-off constant, started high so few steps still succeed.
"""

from __future__ import annotations

from typing import Any, ClassVar

from art.attacks.evasion import CarliniL2Method
from art.estimators.classification import PyTorchClassifier

from detectors.challenges.art_attack import ArtAttack
from detectors.challenges.registry import ChallengeContext, register
from detectors.challenges.spec import ParamValue


@register
class CarliniWagnerL2(ArtAttack):
    """``cw:confidence=0.0,lr=0.1,search_steps=5,steps=10,initial_const=1.0``.

    confidence: logit margin required past the boundary; lr: Adam step size;
    search_steps: binary-search steps over the constant; steps: iterations per search
    step; initial_const: first trade-off constant between distance and misclassification.
    """

    name: ClassVar[str] = "cw"
    defaults: ClassVar[dict[str, ParamValue]] = {
        "confidence": 0.0,
        "lr": 0.1,
        "search_steps": 5,
        "steps": 10,
        "initial_const": 1.0,
    }

    def validate(self) -> None:
        self._require(self._float("confidence") >= 0.0, "confidence must be >= 0")
        self._require(self._float("lr") > 0.0, "lr must be > 0")
        self._require(self._int("search_steps") >= 1, "search_steps must be >= 1")
        self._require(self._int("steps") >= 1, "steps must be >= 1")
        self._require(self._float("initial_const") > 0.0, "initial_const must be > 0")

    def _attack(self, classifier: PyTorchClassifier, ctx: ChallengeContext) -> Any:
        return CarliniL2Method(
            classifier,
            confidence=self._float("confidence"),
            learning_rate=self._float("lr"),
            binary_search_steps=self._int("search_steps"),
            max_iter=self._int("steps"),
            initial_const=self._float("initial_const"),
            batch_size=ctx.batch_size,
            verbose=ctx.progress,
        )
