"""Random H×W crops of scikit-image's bundled photographs: natural-image OOD.

Crops are taken at the photographs' own resolution (grey photographs are repeated to
colour, colour ones converted to grey by luminance, as the target shape asks); a
photograph smaller than the target is first upscaled to fit.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from skimage import data

from detectors.challenges.ood_sources.registry import register_source
from detectors.data import conform_images

# Shipped inside the scikit-image wheel (no download), a mix of grey and colour scenes.
PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "rocket",
    "text",
)


@lru_cache(maxsize=2)
def _photos(channels: int) -> tuple[np.ndarray, ...]:
    """Each photograph as float32 ``[channels, H, W]`` in [0, 1]."""
    out = []
    for name in PHOTOS:
        image = getattr(data, name)().astype(np.float32) / np.float32(255.0)
        chw = image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
        out.append(conform_images(chw[None], channels=channels)[0])
    return tuple(out)


@register_source("skimage")
def skimage_patches(n: int, shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """float32 ``[n, *shape]``: crops from uniformly chosen photographs at random places."""
    channels, height, width = shape
    photos = _photos(channels)
    out = np.empty((n, *shape), dtype=np.float32)
    for i, which in enumerate(rng.integers(len(photos), size=n)):
        photo = photos[which]
        if photo.shape[1] < height or photo.shape[2] < width:
            scale = max(height / photo.shape[1], width / photo.shape[2])
            size = (
                max(height, round(photo.shape[1] * scale)),
                max(width, round(photo.shape[2] * scale)),
            )
            photo = conform_images(photo[None], size=size)[0]
        top = rng.integers(photo.shape[1] - height + 1)
        left = rng.integers(photo.shape[2] - width + 1)
        out[i] = photo[:, top : top + height, left : left + width]
    return out
