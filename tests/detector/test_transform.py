"""LogTransform: log on marked columns, identity elsewhere, JSON round trip, input checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detectors.detector import LogTransform


def test_logs_marked_columns_and_leaves_others() -> None:
    X = np.array([[1e-8, -3.0, 100.0], [0.0, 2.5, 1.0]])
    out = LogTransform(np.array([True, False, True]), floor=1e-12).transform(X)
    np.testing.assert_allclose(out[:, 0], [np.log(1e-8), np.log(1e-12)])  # 0 clamps to floor
    np.testing.assert_array_equal(out[:, 1], X[:, 1])
    np.testing.assert_allclose(out[:, 2], np.log([100.0, 1.0]))
    assert out.dtype == np.float64
    assert X[1, 0] == 0.0  # input untouched


def test_none_logs_every_column_of_any_width() -> None:
    t = LogTransform()
    X = np.array([[1.0, np.e, 0.0]])
    np.testing.assert_allclose(t.transform(X), [[0.0, 1.0, np.log(1e-30)]])
    assert t.n_features is None


def test_json_round_trip() -> None:
    t = LogTransform(np.array([True, False, True, True]), floor=1e-20)
    data = json.loads(json.dumps(t.to_dict()))
    back = LogTransform.from_dict(data)
    assert back == t
    X = np.abs(np.random.default_rng(0).normal(size=(5, 4)))
    np.testing.assert_array_equal(back.transform(X), t.transform(X))
    assert LogTransform.from_dict(LogTransform().to_dict()) == LogTransform()
    assert LogTransform(floor=1e-20) != LogTransform()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"log_columns": [0, 2]}, TypeError, "boolean mask"),
        ({"log_columns": np.ones((2, 2), bool)}, TypeError, "boolean mask"),
        ({"floor": 0.0}, ValueError, "positive"),
        ({"floor": float("nan")}, ValueError, "positive"),
        ({"floor": "small"}, TypeError, "number"),
    ],
)
def test_rejects_bad_construction(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        LogTransform(**kwargs)


def test_rejects_wrong_width_and_non_finite() -> None:
    t = LogTransform(np.array([True, False]))
    with pytest.raises(ValueError, match="3 features per row"):
        t.transform(np.ones((2, 3)))
    with pytest.raises(ValueError, match="NaN/inf"):
        t.transform(np.array([[1.0, np.inf]]))


@pytest.mark.parametrize(
    "data",
    [
        {"type": "sqrt", "floor": 1.0, "log_columns": None},
        {"type": "log", "floor": 1e-30},
        {"type": "log", "floor": 1e-30, "log_columns": [1, 0]},
        ["log"],
    ],
)
def test_from_dict_rejects_malformed(data: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        LogTransform.from_dict(data)  # type: ignore[arg-type]
