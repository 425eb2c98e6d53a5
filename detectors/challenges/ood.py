"""Out-of-distribution inputs shaped like the clean ones.

``ood:source=<name>`` draws from a registered source (``ood_sources``: uniform,
gaussian, digits, skimage); any other value is a path to an ``.npz`` file or an image
folder (``detectors.data.load_images``), conformed to the clean images' channels and
size and sampled to their count: a random order without repetition, reshuffled and
restarted when the set is smaller. Write ``./digits`` for a folder named like a source.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from detectors.challenges.ood_sources import cycled_indices, sources
from detectors.challenges.registry import Challenge, ChallengeContext, Kind, register
from detectors.challenges.spec import ParamValue
from detectors.data import load_images


@register
class OutOfDistribution(Challenge):
    """``ood:source=uniform`` — source: a registered source name or a data path."""

    name: ClassVar[str] = "ood"
    kind: ClassVar[Kind] = "ood"
    defaults: ClassVar[dict[str, ParamValue]] = {"source": "uniform"}

    def validate(self) -> None:
        source = self._str("source")
        self._require(
            source in sources() or Path(source).exists(),
            f"source {source!r} is neither a known source ({', '.join(sources())}) "
            "nor an existing .npz file or image folder",
        )

    def _generate(self, ctx: ChallengeContext) -> np.ndarray:
        n, channels, height, width = ctx.images.shape
        rng = np.random.default_rng(ctx.seed)
        source = self._str("source")
        if source in sources():
            return sources()[source](n, (channels, height, width), rng)
        external = load_images(source, channels=channels, size=(height, width))
        return external.images[cycled_indices(len(external), n, rng)]
