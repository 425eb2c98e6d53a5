"""Synthetic but realistic H features: log-normal per-layer norms plus signed logit statistics.

Eight "norm" columns span eight orders of magnitude and share a common factor (a confident
input moves every layer's norm together); two signed columns mimic max-logit and energy.
Each challenge kind shifts a different subset of columns, by amounts that leave the classes
overlapping (AUROC around 0.8), so thresholds and FPRs are not trivial.
"""

from __future__ import annotations

import numpy as np

N_NORMS = 8
N_FEATURES = N_NORMS + 2
LOG_COLUMNS = np.array([True] * N_NORMS + [False] * 2)
_LOG_MEANS = np.log(np.logspace(-6, 2, N_NORMS))


def make_features(
    rng: np.random.Generator, counts: dict[str, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Rows for each kind in ``counts`` → (X float64 [N, 10], kinds str [N])."""
    blocks, labels = [], []
    for kind, n in counts.items():
        z = rng.normal(size=(n, N_FEATURES))
        log_norms = _LOG_MEANS + z[:, :N_NORMS] + 0.5 * rng.normal(size=(n, 1))
        stats = np.c_[8.0 + 2.0 * z[:, N_NORMS], -10.0 + 2.0 * z[:, N_NORMS + 1]]
        if kind == "adversarial":  # last layers and the max logit drop
            log_norms[:, 5:8] -= 1.2
            stats[:, 0] -= 2.0
        elif kind == "ood":  # mid-network norms drop, the first rises
            log_norms[:, 1:4] -= 1.0
            log_norms[:, 0] += 0.8
        elif kind == "corrupted":  # early layers rise, energy moves
            log_norms[:, 0:2] += 1.0
            stats[:, 1] += 2.0
        elif kind != "clean":
            raise ValueError(kind)
        blocks.append(np.c_[np.exp(log_norms), stats])
        labels += [kind] * n
    return np.concatenate(blocks), np.array(labels)
