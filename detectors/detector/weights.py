"""Sample weights that make a head's fit independent of how many rows each kind brought."""

from __future__ import annotations

import numpy as np

from detectors.detector.kinds import CLEAN


def balanced_weights(row_kinds: np.ndarray) -> np.ndarray:
    """Weights float64 [M] (mean 1) for the rows with kinds ``row_kinds`` str [M].

    Clean rows share half of the total weight and the challenge rows the other half, split
    equally between the kinds present. Challenge sets are generated in bulk (attacks ×
    severities) and their sizes are arbitrary; without this a head's boundary would follow
    those sizes and a large kind would drown a small one. The operating point is unaffected:
    the threshold is recalibrated on held-out clean rows afterwards.
    """
    row_kinds = np.asarray(row_kinds)
    names, inverse, counts = np.unique(row_kinds, return_inverse=True, return_counts=True)
    is_clean = names == CLEAN
    n_challenge_kinds = int((~is_clean).sum())
    if is_clean.any() and n_challenge_kinds:
        share = np.where(is_clean, 0.5, 0.5 / n_challenge_kinds)
    else:
        share = np.full(len(names), 1.0 / len(names))
    weights = (share / counts)[inverse]
    return weights * (len(row_kinds) / weights.sum())
