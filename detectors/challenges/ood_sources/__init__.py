"""OOD sources for ``ood:source=<name>``: a registry, one module per source."""

from detectors.challenges.ood_sources.gaussian import gaussian_noise
from detectors.challenges.ood_sources.glyphs import glyphs
from detectors.challenges.ood_sources.registry import (
    OodSource,
    cycled_indices,
    register_source,
    sources,
)
from detectors.challenges.ood_sources.shapes import random_shapes
from detectors.challenges.ood_sources.skimage_patches import skimage_patches
from detectors.challenges.ood_sources.sklearn_digits import sklearn_digits
from detectors.challenges.ood_sources.smooth_noise import smooth_noise
from detectors.challenges.ood_sources.textures import texture_patches
from detectors.challenges.ood_sources.uniform import uniform_noise

__all__ = [
    "OodSource",
    "cycled_indices",
    "gaussian_noise",
    "glyphs",
    "random_shapes",
    "register_source",
    "skimage_patches",
    "sklearn_digits",
    "smooth_noise",
    "sources",
    "texture_patches",
    "uniform_noise",
]
