"""The classifier and strategy registries: every entry is usable; names are checked."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from detectors.detector import (
    CLASSIFIERS,
    STRATEGIES,
    build_classifier,
    get_strategy,
    register_classifier,
    register_strategy,
)
from detectors.detector.strategies.base import Strategy


def test_registries_hold_the_documented_entries() -> None:
    assert {"logistic", "mlp", "gbm"} <= set(CLASSIFIERS)
    assert {"binary", "multiclass", "per_kind"} <= set(STRATEGIES)


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_every_classifier_is_a_seeded_scaled_pipeline(name: str) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    y = (X[:, 0] + 0.5 * rng.normal(size=300) > 0).astype(np.int64)
    a, b = build_classifier(name, 7), build_classifier(name, 7)
    assert isinstance(a, Pipeline) and isinstance(a.steps[0][1], StandardScaler)
    assert a is not b
    pa = a.fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(pa, b.fit(X, y).predict_proba(X))  # same seed, same model
    assert ((pa[:, 1] > 0.5) == y).mean() > 0.8  # it learns the signal


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_combines_head_outputs(name: str) -> None:
    strategy = get_strategy(name)
    kinds = ("adversarial", "corrupted")
    row_kinds = np.array(["clean", "adversarial", "corrupted", "clean"])
    probas = {}
    for head in strategy.head_names(kinds):
        rows, y = strategy.targets(head, kinds, row_kinds)
        assert rows.dtype == bool and len(y) == rows.sum()
        assert set(y.tolist()) == set(range(strategy.n_classes(head, kinds)))
        p = np.random.default_rng(0).dirichlet(np.ones(strategy.n_classes(head, kinds)), size=5)
        probas[head] = p
    challenging, per_kind = strategy.combine(probas, kinds)
    assert challenging.shape == (5,) and np.all((challenging >= 0) & (challenging <= 1))
    assert set(per_kind) in (set(), set(kinds))


def test_unknown_names_list_the_available_ones() -> None:
    with pytest.raises(ValueError, match=r"available: .*logistic"):
        build_classifier("svm", 0)
    with pytest.raises(ValueError, match=r"available: .*per_kind"):
        get_strategy("ensemble")


def test_duplicate_registration_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_classifier("logistic")(lambda random_state: build_classifier("mlp", 0))
    with pytest.raises(ValueError, match="already registered"):
        register_strategy("binary")(Strategy)
