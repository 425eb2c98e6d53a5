"""The fixed feature transform applied in numpy before H (and before its ONNX graph).

Gradient norms span many orders of magnitude and H reads their ratios, so they are
log-transformed; signed statistics (max logit, energy, ...) stay linear. skl2onnx cannot
convert a log ``FunctionTransformer``, so this step lives outside the exported graph and a
bundle records it with ``to_dict``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from detectors.detector.validation import check_features


class LogTransform:
    """y = log(max(x, floor)) on the marked columns, identity elsewhere.

    Args:
        log_columns: boolean mask [F]; ``None`` logs every column.
        floor: positive lower clamp so that zero norms map to log(floor), not -inf.
    """

    def __init__(
        self, log_columns: np.ndarray | Sequence[bool] | None = None, floor: float = 1e-30
    ) -> None:
        if log_columns is not None:
            mask = np.asarray(log_columns)
            if mask.ndim != 1 or mask.dtype != np.bool_:
                raise TypeError(
                    "log_columns must be a 1-D boolean mask (one flag per feature), "
                    f"got dtype {mask.dtype} and shape {mask.shape}"
                )
            log_columns = mask.copy()
        if isinstance(floor, bool) or not isinstance(floor, int | float | np.floating):
            raise TypeError(f"floor must be a number, got {type(floor).__name__}")
        if not (np.isfinite(floor) and floor > 0):
            raise ValueError(f"floor must be a positive finite number, got {floor}")
        self.log_columns: np.ndarray | None = log_columns
        self.floor = float(floor)

    @property
    def n_features(self) -> int | None:
        """Width the transform was built for, or None when it logs every column of any width."""
        return None if self.log_columns is None else len(self.log_columns)

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Map features float [N, F] to transformed float64 [N, F] (input is not modified)."""
        out = check_features(X, self.n_features).copy()
        cols = slice(None) if self.log_columns is None else self.log_columns
        out[:, cols] = np.log(np.maximum(out[:, cols], self.floor))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description, e.g. ``{"type": "log", "floor": 1e-30, ...}``."""
        mask = None if self.log_columns is None else [bool(v) for v in self.log_columns]
        return {"type": "log", "floor": self.floor, "log_columns": mask}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LogTransform:
        """Inverse of ``to_dict``; raises ValueError/TypeError on a malformed description."""
        if not isinstance(data, Mapping):
            raise TypeError(f"transform description must be a mapping, got {type(data).__name__}")
        if data.get("type") != "log":
            raise ValueError(f"unsupported transform type {data.get('type')!r} (expected 'log')")
        missing = {"floor", "log_columns"} - set(data)
        if missing:
            raise ValueError(f"transform description is missing {sorted(missing)}")
        mask = data["log_columns"]
        if mask is not None and (
            not isinstance(mask, list) or not all(isinstance(v, bool) for v in mask)
        ):
            raise TypeError("transform log_columns must be null or a list of booleans")
        return cls(None if mask is None else np.array(mask, dtype=bool), data["floor"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LogTransform) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(repr(self.to_dict()))

    def __repr__(self) -> str:
        mask = self.log_columns
        n = "all" if mask is None else f"{int(mask.sum())}/{len(mask)}"
        return f"LogTransform(log_columns={n}, floor={self.floor:g})"
