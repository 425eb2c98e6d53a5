"""One binary head per kind: clean versus that kind."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from detectors.detector.kinds import CLEAN
from detectors.detector.strategies.base import Strategy
from detectors.detector.strategies.registry import register_strategy


@register_strategy("per_kind")
class PerKindStrategy(Strategy):
    """Heads are named after their kind; P(challenging) is the largest head probability.

    Each head only ever sees clean rows and its own kind, so a kind never fitted on is
    caught only as far as it resembles one that was.
    """

    def head_names(self, kinds: Sequence[str]) -> list[str]:
        return list(kinds)

    def n_classes(self, head: str, kinds: Sequence[str]) -> int:
        return 2

    def targets(
        self, head: str, kinds: Sequence[str], row_kinds: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        rows = (row_kinds == CLEAN) | (row_kinds == head)
        return rows, (row_kinds[rows] == head).astype(np.int64)

    def combine(
        self, probas: Mapping[str, np.ndarray], kinds: Sequence[str]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        scores = {k: np.asarray(probas[k][:, 1], dtype=np.float64) for k in kinds}
        return np.max(np.stack(list(scores.values())), axis=0), scores
