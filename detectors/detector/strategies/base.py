"""The strategy contract: which heads H has, what each learns, how their outputs combine."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np


class Strategy(ABC):
    """Stateless recipe shared by the scikit-learn detector and its ONNX twin.

    ``kinds`` is always the fitted challenge kinds in canonical order; head class labels are
    integers 0..n_classes-1, so probability column ``j`` is label ``j``.
    """

    name: ClassVar[str]

    @abstractmethod
    def head_names(self, kinds: Sequence[str]) -> list[str]:
        """Names of the heads (also bundle file stems, so plain identifiers)."""

    @abstractmethod
    def n_classes(self, head: str, kinds: Sequence[str]) -> int:
        """Number of probability columns ``head`` outputs."""

    @abstractmethod
    def targets(
        self, head: str, kinds: Sequence[str], row_kinds: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Training rows and labels for ``head``.

        Args:
            row_kinds: str [N], each row's kind ("clean" or a member of ``kinds``).
        Returns:
            (rows bool [N], labels int64 [rows.sum()]).
        """

    @abstractmethod
    def combine(
        self, probas: Mapping[str, np.ndarray], kinds: Sequence[str]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Turn head probabilities {head: float [N, n_classes]} into scores.

        Returns:
            (P(challenging) float64 [N], {kind: score float64 [N]} — may be empty when the
            strategy cannot tell kinds apart).
        """
