"""The scoring API shared by the scikit-learn detector and its ONNX twin."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detectors.detector import attribution
from detectors.detector.strategies.base import Strategy
from detectors.detector.transform import LogTransform
from detectors.detector.validation import check_features


@dataclass(frozen=True)
class DetectorScores:
    """Everything H says about a batch of N rows, from one pass over the heads.

    Attributes:
        probability: P(challenging) float64 [N].
        kind_scores: {kind: score float64 [N]}: P(kind | challenging) from the attribution
            head when the detector has one, else the strategy's per-kind scores (empty for
            the binary strategy).
        flagged: bool [N], probability ≥ threshold.
    """

    probability: np.ndarray
    kind_scores: dict[str, np.ndarray]
    flagged: np.ndarray


class ScoringMixin:
    """predict_proba / kind_scores / predict on top of ``_head_probas``.

    Subclasses provide the attributes below and ``_head_probas``; ``_check_ready`` may raise
    when the detector is not usable yet.
    """

    transform_: LogTransform
    strategy_: Strategy
    kinds_: tuple[str, ...]
    threshold_: float
    n_features_in_: int
    #: Temperature of the attribution head's probabilities (used only when it exists).
    attribution_temperature_: float = 1.0

    def _check_ready(self) -> None:
        """Raise if the detector cannot score yet (default: always ready)."""

    def _head_probas(self, Xt: np.ndarray) -> dict[str, np.ndarray]:
        """{head: probabilities float [N, n_classes]} for transformed features float64 [N, F]."""
        raise NotImplementedError

    def _combine(self, Xt: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        probas = self._head_probas(Xt)
        kind_probas = probas.pop(attribution.HEAD, None)
        for head, p in probas.items():
            expected = (len(Xt), self.strategy_.n_classes(head, self.kinds_))
            if p.shape != expected:
                raise RuntimeError(
                    f"head {head!r} returned probabilities of shape {p.shape}, expected {expected}"
                )
        probability, kinds = self.strategy_.combine(probas, self.kinds_)
        if kind_probas is not None:
            if kind_probas.shape != (len(Xt), len(self.kinds_)):
                raise RuntimeError(
                    f"head {attribution.HEAD!r} returned probabilities of shape "
                    f"{kind_probas.shape}, expected {(len(Xt), len(self.kinds_))}"
                )
            kinds = attribution.kind_scores(kind_probas, self.kinds_, self.attribution_temperature_)
        return probability, kinds

    def scores(self, X: np.ndarray) -> DetectorScores:
        """Score features float [N, F] (raw, before the log transform) in one pass."""
        self._check_ready()
        Xt = self.transform_.transform(check_features(X, self.n_features_in_))
        probability, kinds = self._combine(Xt)
        return DetectorScores(probability, kinds, probability >= self.threshold_)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """P(challenging) float64 [N] for features float [N, F]."""
        return self.scores(X).probability

    def kind_scores(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """{kind: score float64 [N]} for each fitted kind (empty for the binary strategy)."""
        return self.scores(X).kind_scores

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Flags bool [N]: True where P(challenging) ≥ ``threshold_``."""
        return self.scores(X).flagged

    def false_positive_rate(self, X_clean: np.ndarray) -> float:
        """Fraction of the clean rows X_clean float [N, F] that get flagged."""
        return float(np.mean(self.predict(X_clean)))
