"""Gaussian noise: i.i.d. N(0.5, 0.25²) per pixel and channel, clipped to [0, 1]."""

from __future__ import annotations

import numpy as np

from detectors.challenges.ood_sources.registry import register_source

MEAN, STD = 0.5, 0.25  # mid-grey, about 95% of draws inside [0, 1] before clipping


@register_source("gaussian")
def gaussian_noise(n: int, shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """float32 ``[n, *shape]`` of clipped N(MEAN, STD²) values."""
    noise = rng.normal(MEAN, STD, size=(n, *shape)).astype(np.float32)
    return np.clip(noise, 0.0, 1.0)
