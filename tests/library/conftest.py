"""Fixtures for the library tests (features, fitting, evaluation, Sentry): one detector
fitted on the digits model, and its bundle.

Fit and test images are disjoint slices of the digits; the fit uses one fast challenge
per kind so every later test sees a per-kind detector with all three heads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from torch import nn

from detectors.challenges import parse_spec
from detectors.fitting import FitResult, fit_detector, write_bundle

#: One fast challenge per kind; "fgsm" is written bare on purpose (canonical: eps=0.2).
FIT_SPECS = ("fgsm", "corruption:type=gaussian_noise,severity=3", "ood:source=uniform")
#: With 200 clean rows, 50 are held out for calibration: 0.1 of them is 5 expected false
#: positives, the least the calibration accepts without a warning.
TARGET_FPR = 0.1
#: Clean digits for the extractor's statistics, disjoint from H's clean rows: statistics
#: fitted on those very rows make them look cleaner than any fresh input.
STATS_SLICE = slice(300, 600)


@pytest.fixture(scope="session")
def fit_split(digits: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [200, 1, 28, 28], int64 [200]): the clean rows H is fitted on."""
    images, labels = digits
    return images[:200], labels[:200]


@pytest.fixture(scope="session")
def test_split(digits: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [80, 1, 28, 28], int64 [80]): clean digits never used for fitting."""
    images, labels = digits
    return images[1000:1080], labels[1000:1080]


@pytest.fixture(scope="session")
def fitted(
    digits_model: nn.Module,
    fit_split: tuple[np.ndarray, np.ndarray],
    digits: tuple[np.ndarray, np.ndarray],
) -> FitResult:
    """H fitted against FIT_SPECS on the fit split (logistic, per kind)."""
    images, labels = fit_split
    return fit_detector(
        digits_model,
        images,
        labels,
        [parse_spec(s) for s in FIT_SPECS],
        stats_images=digits[0][STATS_SLICE],
        stats_labels=digits[1][STATS_SLICE],
        target_fpr=TARGET_FPR,
        seed=3,
        progress=False,
    )


@pytest.fixture(scope="session")
def bundle_dir(
    fitted: FitResult, digits_model: nn.Module, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The fitted detector written as a bundle (treat as read-only)."""
    return write_bundle(fitted, digits_model, tmp_path_factory.mktemp("pipeline") / "bundle")
