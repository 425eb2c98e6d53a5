"""Fixtures for H: synthetic feature sets and one fitted detector per classifier × strategy."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.detector import CLASSIFIERS, STRATEGIES, ReliabilityDetector
from tests.detector.synthetic import LOG_COLUMNS, make_features

KINDS = ("adversarial", "ood", "corrupted")
COMBOS = [(c, s) for c in sorted(CLASSIFIERS) for s in sorted(STRATEGIES)]


@pytest.fixture(scope="session")
def train_set() -> tuple[np.ndarray, np.ndarray]:
    """(X float64 [2000, 10], kinds str [2000]): 800 clean rows, 400 per challenge kind."""
    rng = np.random.default_rng(1)
    return make_features(rng, {"clean": 800, **dict.fromkeys(KINDS, 400)})


@pytest.fixture(scope="session")
def fresh_set() -> tuple[np.ndarray, np.ndarray]:
    """Fresh rows from the same distributions: 1000 clean, 300 per kind."""
    rng = np.random.default_rng(2)
    return make_features(rng, {"clean": 1000, **dict.fromkeys(KINDS, 300)})


@pytest.fixture(scope="session")
def fitted(train_set: tuple[np.ndarray, np.ndarray]) -> dict[tuple[str, str], ReliabilityDetector]:
    """{(classifier, strategy): fitted detector} for every registered combination."""
    X, kinds = train_set
    return {
        (c, s): ReliabilityDetector(c, s, log_columns=LOG_COLUMNS).fit(X, kinds) for c, s in COMBOS
    }
