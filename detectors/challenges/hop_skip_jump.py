"""HopSkipJump, L2 (Chen et al., 2020): decision-based, uses predicted labels only.

Defaults are small for CPU speed (tens of ms per 28×28 image); raise steps and
max_eval for smaller perturbations.

ART draws each image's starting point from an unseeded ``RandomState``, so the same
seed would not give the same output. Starting points are made here instead, the way
ART makes them (up to ``INIT_TRIES`` uniform-noise images until one is misclassified,
then a bisection toward the original), from the seeded generator, and handed to ART
as ``x_adv_init``. Images without a misclassified noise draw are returned unchanged,
as ART does when its own search fails.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from art.attacks.evasion import HopSkipJump
from art.estimators.classification import PyTorchClassifier

from detectors.challenges.art_attack import ArtAttack
from detectors.challenges.registry import ChallengeContext, register
from detectors.challenges.spec import ParamValue

INIT_TRIES = 100  # ART's default init_size
BISECTION_TOL = 1e-3  # on the blend weight between original and starting point


def starting_points(
    classifier: PyTorchClassifier, x: np.ndarray, rng: np.random.Generator, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Misclassified points near ``x`` (float32 [N, C, H, W]) and which images got one.

    Returns (points float32 [N, C, H, W], found bool [N]); points[i] is x[i] where not found.
    """

    def predict(batch: np.ndarray) -> np.ndarray:
        return classifier.predict(batch, batch_size=batch_size).argmax(axis=1)

    original = predict(x)
    noise = x.copy()
    found = np.zeros(len(x), dtype=bool)
    for _ in range(INIT_TRIES):
        todo = np.flatnonzero(~found)
        if len(todo) == 0:
            break
        draws = rng.uniform(0.0, 1.0, size=x[todo].shape).astype(np.float32)
        hit = predict(draws) != original[todo]
        noise[todo[hit]] = draws[hit]
        found[todo[hit]] = True
    # Bisect the blend weight w of (1 - w) * x + w * noise: w = 1 is misclassified, 0 not.
    lo, hi = np.zeros(len(x)), np.where(found, 1.0, 0.0)
    shape = (-1,) + (1,) * (x.ndim - 1)
    while found.any() and (hi - lo)[found].max() > BISECTION_TOL:
        mid = (lo + hi) / 2
        blend = ((1 - mid).reshape(shape) * x + mid.reshape(shape) * noise).astype(np.float32)
        flipped = predict(blend) != original
        hi = np.where(found & flipped, mid, hi)
        lo = np.where(found & ~flipped, mid, lo)
    points = ((1 - hi).reshape(shape) * x + hi.reshape(shape) * noise).astype(np.float32)
    return points, found


@register
class HopSkipJumpAttack(ArtAttack):
    """``hopskipjump:steps=5,max_eval=500,init_eval=50``.

    steps: boundary-walk iterations; max_eval / init_eval: the largest and first number
    of queries for each gradient-direction estimate.
    """

    name: ClassVar[str] = "hopskipjump"
    defaults: ClassVar[dict[str, ParamValue]] = {"steps": 5, "max_eval": 500, "init_eval": 50}

    @property
    def stochastic(self) -> bool:
        return True

    def validate(self) -> None:
        self._require(self._int("steps") >= 1, "steps must be >= 1")
        self._require(self._int("init_eval") >= 1, "init_eval must be >= 1")
        self._require(
            self._int("max_eval") >= self._int("init_eval"), "max_eval must be >= init_eval"
        )

    def _attack(self, classifier: PyTorchClassifier, ctx: ChallengeContext) -> Any:
        return HopSkipJump(
            classifier,
            norm=2,
            max_iter=self._int("steps"),
            max_eval=self._int("max_eval"),
            init_eval=self._int("init_eval"),
            init_size=INIT_TRIES,
            batch_size=ctx.batch_size,
            verbose=ctx.progress,
        )

    def _run(
        self,
        attack: Any,
        classifier: PyTorchClassifier,
        ctx: ChallengeContext,
        y: np.ndarray | None,
    ) -> np.ndarray:
        rng = np.random.default_rng(ctx.seed)
        points, found = starting_points(classifier, ctx.images, rng, ctx.batch_size)
        out = ctx.images.copy()
        if found.any():
            out[found] = attack.generate(x=ctx.images[found], x_adv_init=points[found])
        return out
