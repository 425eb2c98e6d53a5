"""scikit-learn's bundled 8×8 handwritten digits, upscaled: near-OOD for an MNIST model.

Different writers, 4-bit intensities and a blurry upscale make them look like digits
but not like MNIST; 1,797 images, sampled without repetition until exhausted.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from sklearn.datasets import load_digits

from detectors.challenges.ood_sources.registry import cycled_indices, register_source
from detectors.data import conform_images


@lru_cache(maxsize=1)
def _digits_8x8() -> np.ndarray:
    """float32 [1797, 1, 8, 8] in [0, 1] (the data set's values are 0..16)."""
    images = load_digits().images.astype(np.float32) / np.float32(16.0)
    images.setflags(write=False)
    return images[:, None]


@register_source("digits")
def sklearn_digits(n: int, shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """float32 ``[n, *shape]``: randomly chosen digits resized (bilinear) to H×W."""
    base = _digits_8x8()
    picked = base[cycled_indices(len(base), n, rng)]
    channels, height, width = shape
    return conform_images(picked, channels=channels, size=(height, width))
