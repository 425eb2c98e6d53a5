"""A photometric corruption outside the 15 common ones: a tone curve and a haze.

``tone:gamma=2.0,haze=0.4,level=0.5`` maps every pixel x in [0, 1] to
``(1 - haze) * x**gamma + haze * level``: gamma < 1 lifts the shadows, gamma > 1 sinks
them, and the haze blends the image toward a constant grey ``level``, which narrows its
intensity range. Camera exposure curves and lens flare do the like. None of ImageNet-C's
15 common corruptions is this map: ``brightness`` adds to HSV value, ``contrast`` pivots
on each image's own mean, ``fog`` adds a fractal; so the kind-attribution head can learn
"the tones moved" from it while the report's photometric sets stay unseen.
Deterministic: the seed changes nothing.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from detectors.challenges.registry import Challenge, ChallengeContext, Kind, register
from detectors.challenges.spec import ParamValue


@register
class Tone(Challenge):
    """``tone:gamma=1.0,haze=0.5,level=0.5``; gamma in [0.1, 10], haze in [0, 1),
    level in [0, 1]."""

    name: ClassVar[str] = "tone"
    kind: ClassVar[Kind] = "corrupted"
    defaults: ClassVar[dict[str, ParamValue]] = {"gamma": 1.0, "haze": 0.5, "level": 0.5}

    @property
    def stochastic(self) -> bool:
        return False

    def validate(self) -> None:
        self._require(0.1 <= self._float("gamma") <= 10.0, "gamma must be in [0.1, 10]")
        self._require(0.0 <= self._float("haze") < 1.0, "haze must be in [0, 1)")
        self._require(0.0 <= self._float("level") <= 1.0, "level must be in [0, 1]")
        self._require(
            self._float("gamma") != 1.0 or self._float("haze") > 0.0,
            "gamma 1 and haze 0 leave the image as it is; change one",
        )

    def _generate(self, ctx: ChallengeContext) -> np.ndarray:
        haze = self._float("haze")
        curved = np.power(ctx.images, self._float("gamma"), dtype=np.float64)
        return (1.0 - haze) * curved + haze * self._float("level")
