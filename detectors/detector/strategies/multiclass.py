"""One head over clean plus every fitted kind."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from detectors.detector.kinds import CLEAN
from detectors.detector.strategies.base import Strategy
from detectors.detector.strategies.registry import register_strategy

HEAD = "multiclass"


@register_strategy("multiclass")
class MulticlassStrategy(Strategy):
    """Label 0 is clean, label i+1 is ``kinds[i]``; P(challenging) = 1 − P(clean)."""

    def head_names(self, kinds: Sequence[str]) -> list[str]:
        return [HEAD]

    def n_classes(self, head: str, kinds: Sequence[str]) -> int:
        return 1 + len(kinds)

    def targets(
        self, head: str, kinds: Sequence[str], row_kinds: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        label = {CLEAN: 0, **{k: i + 1 for i, k in enumerate(kinds)}}
        rows = np.isin(row_kinds, list(label))
        return rows, np.array([label[k] for k in row_kinds[rows]], dtype=np.int64)

    def combine(
        self, probas: Mapping[str, np.ndarray], kinds: Sequence[str]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        p = np.asarray(probas[HEAD], dtype=np.float64)
        challenging = np.clip(1.0 - p[:, 0], 0.0, 1.0)
        return challenging, {k: p[:, i + 1] for i, k in enumerate(kinds)}
