"""Kind attribution: which challenge kind a flagged input most likely is.

Detection heads learn clean versus challenge; asked which kind an input is, their
scores answer "which head fires hardest", and an unseen kind fires the head whose
fitted kind sits farthest from clean — on the MNIST demo that made nearly every flagged
input "corrupted". The attribution head is trained for the question itself: one
multi-class classifier over the fitted kinds, on challenge rows only (kind against
kind), with a temperature calibrated on held-out challenge rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Name of the attribution head (also its bundle file stem).
HEAD = "kind"
#: Temperatures are searched in [1/BOUND, BOUND].
TEMPERATURE_BOUND = 100.0
# Probabilities are clipped here before the log: ONNX and sklearn may return exact zeros.
_EPS = 1e-12


def targets(kinds: Sequence[str], row_kinds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows (bool [N]: the challenge rows) and labels (int64: index in ``kinds``)."""
    label = {k: i for i, k in enumerate(kinds)}
    rows = np.isin(row_kinds, list(kinds))
    return rows, np.array([label[k] for k in row_kinds[rows]], dtype=np.int64)


def detection_boost(row_kinds: np.ndarray, detection: np.ndarray) -> np.ndarray:
    """float64 [M]: factors that give, within each kind, the detection heads' rows
    (``detection`` bool [M]) half of the kind's weight and the attribution-only rows the
    other half; all ones for a kind with rows of one sort only.

    The attribution-only generators broaden each family, but there are many of them: left
    to their row counts they outvote the fitted generator (on the MNIST demo, Gaussian
    noise went from 96% to 23% named "corrupted" once blurs and spatter joined it).
    """
    boost = np.ones(len(row_kinds))
    for kind in np.unique(row_kinds):
        rows = row_kinds == kind
        n_det, n_extra = int(np.sum(rows & detection)), int(np.sum(rows & ~detection))
        if n_det and n_extra:
            # after balancing, each row of a kind weighs the same: rescale the two groups
            boost[rows & detection] = 0.5 * (n_det + n_extra) / n_det
            boost[rows & ~detection] = 0.5 * (n_det + n_extra) / n_extra
    return boost


def held_out_rows(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """bool [M]: a ``fraction`` of each label's rows (at least one, never all) held out."""
    held = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        n = min(max(1, round(fraction * len(idx))), len(idx) - 1)
        held[rng.choice(idx, size=n, replace=False)] = True
    return held


def apply_temperature(probas: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T) row-wise: float64 [N, K] -> float64 [N, K] (argmax unchanged)."""
    logits = np.log(np.clip(np.asarray(probas, dtype=np.float64), _EPS, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def fit_temperature(probas: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float:
    """The T minimising the weighted negative log-likelihood of ``labels`` int [M] under
    ``apply_temperature(probas [M, K], T)`` (Guo et al. 2017's temperature scaling)."""
    from scipy.optimize import minimize_scalar  # fitting only: serving never needs SciPy

    def nll(log_t: float) -> float:
        p = apply_temperature(probas, float(np.exp(log_t)))
        return float(-np.sum(weights * np.log(np.clip(p[np.arange(len(labels)), labels], _EPS, 1))))

    bound = float(np.log(TEMPERATURE_BOUND))
    best = minimize_scalar(nll, bounds=(-bound, bound), method="bounded")
    return float(np.exp(best.x))


def kind_scores(
    probas: np.ndarray, kinds: Sequence[str], temperature: float
) -> dict[str, np.ndarray]:
    """{kind: calibrated P(kind | challenging) float64 [N]} from the head's probas [N, K]."""
    p = apply_temperature(probas, temperature)
    return {k: p[:, i] for i, k in enumerate(kinds)}
