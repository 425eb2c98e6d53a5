"""Random geometric shapes: a few filled ellipses, rectangles and lines on a flat ground.

Synthetic far-OOD with sharp edges and flat regions, unlike noise (no structure) or
photographs (natural textures); drawn with scikit-image's rasterisers.
"""

from __future__ import annotations

import numpy as np
from skimage import draw

from detectors.challenges.ood_sources.registry import register_source

MAX_SHAPES = 4


def _one(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [H, W]: 1 to MAX_SHAPES shapes of random grey levels on a random ground."""
    canvas = np.full((height, width), rng.uniform(0.0, 0.5), dtype=np.float32)
    for _ in range(rng.integers(1, MAX_SHAPES + 1)):
        level = rng.uniform(0.3, 1.0)
        kind = rng.integers(3)
        r, c = rng.uniform(0, height), rng.uniform(0, width)
        if kind == 0:
            rr, cc = draw.ellipse(
                r,
                c,
                rng.uniform(2, height / 2),
                rng.uniform(2, width / 2),
                (height, width),
                rotation=rng.uniform(0, np.pi),
            )
        elif kind == 1:
            end = (
                min(height - 1, r + rng.uniform(3, height)),
                min(width - 1, c + rng.uniform(3, width)),
            )
            rr, cc = draw.rectangle(
                (int(r), int(c)), (int(end[0]), int(end[1])), shape=(height, width)
            )
        else:
            rr, cc, val = draw.line_aa(
                int(r), int(c), int(rng.integers(height)), int(rng.integers(width))
            )
            canvas[rr, cc] = np.maximum(canvas[rr, cc], level * val)
            continue
        canvas[rr, cc] = level
    return canvas


@register_source("shapes")
def random_shapes(n: int, shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """float32 ``[n, *shape]`` in [0, 1]; colour images repeat the grey drawing."""
    channels, height, width = shape
    grey = np.stack([_one(height, width, rng) for _ in range(n)])[:, None]
    return np.repeat(grey, channels, axis=1)
