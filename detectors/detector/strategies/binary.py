"""One head: clean versus any challenge kind."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from detectors.detector.kinds import CLEAN
from detectors.detector.strategies.base import Strategy
from detectors.detector.strategies.registry import register_strategy

HEAD = "challenge"


@register_strategy("binary")
class BinaryStrategy(Strategy):
    """P(challenging) is the single head's positive probability; no per-kind scores."""

    def head_names(self, kinds: Sequence[str]) -> list[str]:
        return [HEAD]

    def n_classes(self, head: str, kinds: Sequence[str]) -> int:
        return 2

    def targets(
        self, head: str, kinds: Sequence[str], row_kinds: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        rows = np.ones(len(row_kinds), dtype=bool)
        return rows, (row_kinds != CLEAN).astype(np.int64)

    def combine(
        self, probas: Mapping[str, np.ndarray], kinds: Sequence[str]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        # One clean-vs-rest head carries no information about which kind it saw.
        return np.asarray(probas[HEAD][:, 1], dtype=np.float64), {}
