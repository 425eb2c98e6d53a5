"""Random H×W crops of GIMP's texture patterns: far-OOD surfaces (fabric, wood, stone, ...).

Debian's ``gimp-data`` installs 58 patterns as ``.pat`` files under
``/usr/share/gimp/2.0/patterns`` (GPL-3+ with GIMP); ``GRADSENTRY_TEXTURES_DIR`` points
elsewhere. A ``.pat`` file is a big-endian header — header size, version, width,
height, bytes per pixel (1–4: grey, grey+alpha, RGB, RGBA), the magic ``GPAT``, a
name — then the pixels. Colour patterns become grey by luminance (alpha dropped) or
stay RGB, as the target shape asks; a pattern smaller than the target is upscaled first.
"""

from __future__ import annotations

import os
import struct
from functools import lru_cache
from pathlib import Path

import numpy as np

from detectors.challenges.ood_sources.registry import register_source
from detectors.data import conform_images

DEFAULT_DIR = "/usr/share/gimp/2.0/patterns"
ENV = "GRADSENTRY_TEXTURES_DIR"
_HEADER = struct.Struct(">5I4s")


def read_pat(path: str | os.PathLike[str]) -> np.ndarray:
    """One GIMP pattern as float32 [C, H, W] in [0, 1], C = 1 (grey) or 3 (colour)."""
    data = Path(path).read_bytes()
    if len(data) < _HEADER.size:
        raise ValueError(f"{path}: too short for a GIMP pattern")
    header_size, _version, width, height, depth, magic = _HEADER.unpack_from(data)
    if magic != b"GPAT" or depth not in (1, 2, 3, 4):
        raise ValueError(f"{path}: not a GIMP pattern (magic {magic!r}, {depth} bytes/pixel)")
    n = width * height * depth
    if len(data) < header_size + n:
        raise ValueError(f"{path}: truncated pixel data")
    pixels = np.frombuffer(data, np.uint8, n, header_size).reshape(height, width, depth)
    channels = pixels[..., :1] if depth <= 2 else pixels[..., :3]  # alpha dropped
    return channels.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)


@lru_cache(maxsize=2)
def _patterns(root: str, channels: int) -> tuple[np.ndarray, ...]:
    files = sorted(Path(root).rglob("*.pat"))
    if not files:
        raise FileNotFoundError(
            f"no GIMP patterns (*.pat) under {root}: install the Debian package gimp-data "
            f"or set {ENV}"
        )
    return tuple(conform_images(read_pat(f)[None], channels=channels)[0] for f in files)


@register_source("textures")
def texture_patches(n: int, shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """float32 ``[n, *shape]``: crops of uniformly chosen patterns at random places."""
    channels, height, width = shape
    patterns = _patterns(os.environ.get(ENV, DEFAULT_DIR), channels)
    out = np.empty((n, *shape), dtype=np.float32)
    for i, which in enumerate(rng.integers(len(patterns), size=n)):
        image = patterns[which]
        if image.shape[1] < height or image.shape[2] < width:
            scale = max(height / image.shape[1], width / image.shape[2])
            size = (
                max(height, round(image.shape[1] * scale)),
                max(width, round(image.shape[2] * scale)),
            )
            image = conform_images(image[None], size=size)[0]
        top = rng.integers(image.shape[1] - height + 1)
        left = rng.integers(image.shape[2] - width + 1)
        out[i] = image[:, top : top + height, left : left + width]
    return out
