"""What one model input must look like: shape, dtype, value range, normalisation, labels."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Element types a model may compute in (numpy names).
MODEL_DTYPES: tuple[str, ...] = ("float32", "float64")


class SpecError(ValueError):
    """An InputSpec is inconsistent; the message names the field."""


@dataclass(frozen=True)
class InputSpec:
    """One input is an array of ``shape`` (C, H, W) and ``dtype``, values in ``value_range``.

    ``mean`` / ``std`` (one per channel, or empty) are applied by the service after
    validation, x' = (x - mean) / std; leave them empty when the model normalises itself.
    ``labels`` names the classes (empty: no names).
    """

    shape: tuple[int, int, int] = (1, 28, 28)
    dtype: str = "float32"
    value_range: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or any(
            not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in self.shape
        ):
            raise SpecError(f"shape must be three positive integers (C, H, W), got {self.shape}")
        if self.dtype not in MODEL_DTYPES:
            raise SpecError(f"dtype must be one of {list(MODEL_DTYPES)}, got {self.dtype!r}")
        lo, hi = self.value_range
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise SpecError(f"value_range must be finite with min < max, got {self.value_range}")
        with np.errstate(over="ignore"):  # an overflow is the error reported here
            stored = np.asarray(self.value_range).astype(self.dtype)
        if not np.isfinite(stored).all():
            raise SpecError(f"value_range {self.value_range} overflows {self.dtype}")
        channels = self.shape[0]
        if len(self.mean) != len(self.std):
            raise SpecError("mean and std must both be set or both be empty")
        if self.mean and len(self.mean) != channels:
            raise SpecError(
                f"mean/std need one value per channel ({channels}), got {len(self.mean)}"
            )
        if any(not (math.isfinite(s) and s > 0) for s in self.std):
            raise SpecError(f"std values must be finite and > 0, got {self.std}")
        if any(not math.isfinite(m) for m in self.mean):
            raise SpecError(f"mean values must be finite, got {self.mean}")

    @property
    def channels(self) -> int:
        """C."""
        return self.shape[0]
