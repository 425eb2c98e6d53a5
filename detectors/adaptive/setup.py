"""What an adaptive-attack run needs: a classifier, its bundle, and three clean data sets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn


@dataclass(frozen=True)
class Labelled:
    """images float32 [N, C, H, W] in [0, 1]; labels int64 [N]."""

    images: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class AttackSetup:
    """A classifier and its fitted detector, with the data the attack report uses.

    Attributes:
        name: what the report calls it (the demo's name).
        model: the classifier in eval mode.
        bundle: the detector bundle directory fitted for ``model``.
        test: the clean inputs attacked (never used in any fit).
        baseline_fit: clean data the feature-space baselines are fitted on (for the demos,
            the classifier's own training split, as in the eval report).
        calibration: clean data the baselines' thresholds are calibrated on, at the
            bundle's target false-positive rate (gradsentry's threshold is the bundle's).
        description: one line on where the data comes from.
    """

    name: str
    model: nn.Module
    bundle: Path
    test: Labelled
    baseline_fit: Labelled
    calibration: Labelled
    description: str = ""
