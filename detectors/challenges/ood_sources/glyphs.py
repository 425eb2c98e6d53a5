"""Glyphs: one or two Latin letters in Pillow's bundled font, light strokes on a dark ground.

Near-OOD for photographs of objects: thin strokes with no texture and no shading, placed,
sized, rotated and thickened at random. Letters only (no digits), drawn at 4× and
box-filtered down so the strokes are anti-aliased like a scanned character.
"""

from __future__ import annotations

import string

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from detectors.challenges.ood_sources.registry import register_source

LETTERS = string.ascii_letters
#: Drawn at this multiple of the target size, then box-filtered down (anti-aliasing).
SUPERSAMPLE = 4
#: Glyph height as a share of the image side.
SIZE = (0.5, 0.9)
#: Rotation in degrees, either way.
MAX_ROTATION = 25.0


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError) as exc:  # Pillow < 10.1 or no FreeType
        raise RuntimeError(
            "ood:source=glyphs needs Pillow >= 10.1 built with FreeType (scalable default font)"
        ) from exc


def _one(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [H, W] in [0, 1]: one glyph image."""
    big = (width * SUPERSAMPLE, height * SUPERSAMPLE)
    ground = int(rng.uniform(0, 40))
    canvas = Image.new("L", big, ground)
    text = "".join(rng.choice(list(LETTERS), size=int(rng.integers(1, 3))))
    font = _font(int(rng.uniform(*SIZE) * big[1]))
    centre = (big[0] * rng.uniform(0.4, 0.6), big[1] * rng.uniform(0.4, 0.6))
    ImageDraw.Draw(canvas).text(
        centre,
        text,
        fill=int(rng.uniform(180, 255)),
        font=font,
        anchor="mm",
        stroke_width=int(rng.integers(0, 2 * SUPERSAMPLE + 1)),
        stroke_fill=None,
    )
    canvas = canvas.rotate(
        rng.uniform(-MAX_ROTATION, MAX_ROTATION), Image.Resampling.BILINEAR, fillcolor=ground
    )
    small = canvas.resize((width, height), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


@register_source("glyphs")
def glyphs(n: int, shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """float32 ``[n, *shape]`` in [0, 1]; colour images repeat the grey drawing."""
    channels, height, width = shape
    grey = np.stack([_one(height, width, rng) for _ in range(n)])[:, None]
    return np.repeat(grey, channels, axis=1)
