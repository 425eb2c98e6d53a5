"""Input checks for feature matrices handed to H."""

from __future__ import annotations

import numpy as np


def check_features(X: object, n_features: int | None = None, name: str = "X") -> np.ndarray:
    """Return ``X`` as a C-contiguous float64 array [N, F], or raise a clear error.

    Rejects non-numeric data (TypeError), non-2-D shapes, zero rows, a width other than
    ``n_features`` (when given) and NaN/inf values (ValueError).
    """
    arr = np.asarray(X)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
    ):
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise TypeError(f"{name} must be real-valued, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D [rows, features], got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} has no rows")
    if n_features is not None and arr.shape[1] != n_features:
        raise ValueError(
            f"{name} has {arr.shape[1]} features per row, the detector expects {n_features}"
        )
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    finite = np.isfinite(arr)
    if not finite.all():
        rows, cols = np.nonzero(~finite)
        raise ValueError(
            f"{name} contains {len(rows)} NaN/inf value(s), first at row {rows[0]}, "
            f"column {cols[0]}"
        )
    return arr
