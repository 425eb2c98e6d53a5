"""Smooth noise: uniform noise on a coarse grid, upsampled bilinearly to H×W.

Blob-like, low-frequency far-OOD: spatially correlated where uniform and Gaussian
noise are independent per pixel.
"""

from __future__ import annotations

import numpy as np

from detectors.challenges.ood_sources.registry import register_source
from detectors.data import conform_images

#: Coarse grid sides drawn from: 3×3 (large blobs) to 7×7 (small ones).
GRID = (3, 4, 5, 6, 7)


@register_source("smooth")
def smooth_noise(n: int, shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """float32 ``[n, *shape]`` in [0, 1]."""
    channels, height, width = shape
    out = np.empty((n, *shape), dtype=np.float32)
    for i in range(n):
        side = int(rng.choice(GRID))
        coarse = rng.uniform(0.0, 1.0, size=(1, channels, side, side)).astype(np.float32)
        out[i] = conform_images(coarse, size=(height, width))[0]
    return np.clip(out, 0.0, 1.0)
