"""Common corruptions (Hendrycks & Dietterich, 2019) from ``imagecorruptions``.

The library works on H×W×3 uint8 images of at least 32×32 and returns the same. Here:

- smaller images are reflect-padded to 32 (split evenly between the sides), corrupted
  and cropped back. Reflection rather than zeros: a zero frame is a hard edge that
  blurs, zoom and elastic warps would drag into the crop, and it would pull down the
  image mean that ``contrast`` pivots on; on black-background digits the two agree.
- grey images ``[N, 1, H, W]`` are repeated to three channels and converted back by
  BT.601 luminance, except for per-channel noises, where the first channel is kept:
  averaging three independent noise draws would weaken the noise below what the
  severity defines (and turn salt-and-pepper into grey speckles).
- each image's randomness is seeded from (seed, index), so an image's corruption does
  not depend on batching or order. The library draws from numpy's global generator (and
  takes explicit seeds for impulse_noise and glass_blur); its state is restored after.

Parameters were tuned by the library's authors for 224-px images: at 32 px blurs and
elastic_transform are extreme. Severities are reported as the library defines them.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from imagecorruptions import corrupt, get_corruption_names
from tqdm import tqdm

from detectors.challenges.registry import Challenge, ChallengeContext, Kind, register
from detectors.challenges.seeding import derived_seed, seeded
from detectors.challenges.spec import ParamValue
from detectors.data import LUMA

MIN_SIDE = 32  # imagecorruptions refuses smaller images
COMMON = tuple(get_corruption_names("common"))
# The four held-out "validation" corruptions are accepted too: useful as unseen kinds.
ALL = tuple(get_corruption_names("all"))
# Corruptions whose output does not depend on the random state.
DETERMINISTIC = frozenset(
    {"defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression"}
    | {"gaussian_blur", "saturate"}
)
# Independent noise per channel: keep one channel when going back to grey.
PER_CHANNEL_NOISE = frozenset({"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"})
# Corruptions that ignore the global generator and take a seed argument instead.
TAKES_SEED = frozenset({"impulse_noise", "glass_blur"})


def corrupt_image(image: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """Corrupt one float32 ``[C, H, W]`` image in [0, 1] (C in {1, 3}); same shape out.

    Draws from numpy's global generator after seeding it with ``seed``; callers that
    care about the global state wrap this in ``seeding.seeded``.
    """
    channels, height, width = image.shape
    pad_h, pad_w = max(0, MIN_SIDE - height), max(0, MIN_SIDE - width)
    top, left = pad_h // 2, pad_w // 2
    hwc = np.round(image.transpose(1, 2, 0) * 255.0).astype(np.uint8)
    if channels == 1:
        hwc = np.repeat(hwc, 3, axis=2)
    hwc = np.pad(hwc, ((top, pad_h - top), (left, pad_w - left), (0, 0)), mode="reflect")
    np.random.seed(seed)
    kwargs = {"seed": seed} if corruption in TAKES_SEED else {}
    out = corrupt(hwc, severity=severity, corruption_name=corruption, **kwargs)
    out = out[top : top + height, left : left + width].astype(np.float32) / 255.0
    if channels == 1:
        grey = out[..., 0] if corruption in PER_CHANNEL_NOISE else out @ LUMA
        return grey[None].astype(np.float32)
    return out.transpose(2, 0, 1)


@register
class Corruption(Challenge):
    """``corruption:type=gaussian_noise,severity=3``.

    type: one of the 15 common corruptions (``COMMON``) or the 4 held-out ones
    (speckle_noise, gaussian_blur, spatter, saturate); severity: 1 (mild) .. 5.
    """

    name: ClassVar[str] = "corruption"
    kind: ClassVar[Kind] = "corrupted"
    defaults: ClassVar[dict[str, ParamValue]] = {"type": "gaussian_noise", "severity": 3}

    @property
    def stochastic(self) -> bool:
        return self._str("type") not in DETERMINISTIC

    def validate(self) -> None:
        self._require(
            self._str("type") in ALL,
            f"unknown type {self._str('type')!r} (known: {', '.join(ALL)})",
        )
        self._require(1 <= self._int("severity") <= 5, "severity must be 1..5")

    def _generate(self, ctx: ChallengeContext) -> np.ndarray:
        corruption, severity = self._str("type"), self._int("severity")
        out = np.empty_like(ctx.images)
        rows = tqdm(
            enumerate(ctx.images),
            total=len(ctx.images),
            desc=corruption,
            disable=not ctx.progress,
        )
        with seeded(ctx.seed):
            for i, image in rows:
                out[i] = corrupt_image(image, corruption, severity, derived_seed(ctx.seed, i))
        return out
