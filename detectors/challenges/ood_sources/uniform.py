"""Uniform noise: every pixel and channel drawn independently from U[0, 1)."""

from __future__ import annotations

import numpy as np

from detectors.challenges.ood_sources.registry import register_source


@register_source("uniform")
def uniform_noise(n: int, shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """float32 ``[n, *shape]`` of i.i.d. U[0, 1) values."""
    return rng.random((n, *shape), dtype=np.float32)
