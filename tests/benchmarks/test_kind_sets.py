"""The kind benchmarks' helpers: how report sets are grouped, the input views, feature rows."""

from __future__ import annotations

import numpy as np

from benchmarks.kind_ceiling import group_of
from benchmarks.kind_sets import VIEWS, Rows
from detectors.demo.datasets import FASHION, MNIST


def test_every_report_set_falls_in_a_group_of_one_family() -> None:
    """Severities of a corruption, budgets of an attack share a group; OOD sets are their
    own; no group mixes families."""
    for demo in (MNIST, FASHION):
        groups: dict[str, set[str]] = {}
        for name, spec in demo.report_sets():
            kind = "ood" if spec.startswith("ood:") else spec.split(":")[0]
            groups.setdefault(group_of(name, spec), set()).add(kind)
        assert all(len(kinds) == 1 for kinds in groups.values()), groups
    assert group_of("fog s3", "corruption:type=fog,severity=3") == "fog"
    assert group_of("fgsm eps 0.2", "fgsm:eps=0.2") == group_of("fgsm eps 0.05", "fgsm:eps=0.05")
    assert group_of("mnist digits", "ood:source=../shared/data/mnist10k.npz") == "mnist digits"


def test_stretch_spreads_each_image_over_the_unit_range() -> None:
    """A dimmed, hazed image comes back to [0, 1] exactly (min 0, max 1, same order);
    a flat image stays finite."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (3, 1, 28, 28)).astype(np.float32)
    hazed = 0.3 + 0.4 * x  # [0.3, 0.7]
    flat = np.full((1, 1, 28, 28), 0.5, np.float32)
    out = VIEWS["stretch"](np.concatenate([hazed, flat]))
    assert out.shape == (4, 1, 28, 28) and out.dtype == np.float32
    # float32 rounding of (x - min) / ptp: a few ulps of 1
    np.testing.assert_allclose(out[:3], VIEWS["stretch"](x), atol=1e-6)
    assert out[:3].min() == 0.0 and np.allclose(out[:3].max(axis=(1, 2, 3)), 1.0)
    assert np.isfinite(out[3]).all() and (out[3] == 0).all()


def test_median_removes_isolated_pixels() -> None:
    """One white pixel on black is removed; a 3x3 block survives."""
    x = np.zeros((1, 1, 28, 28), np.float32)
    x[0, 0, 5, 5] = 1.0
    x[0, 0, 10:13, 10:13] = 1.0
    out = VIEWS["median"](x)
    assert out[0, 0, 5, 5] == 0.0 and out[0, 0, 11, 11] == 1.0


def test_rows_keep_features_views_and_labels_aligned() -> None:
    a = Rows(np.ones((2, 3)), np.zeros((2, 6)), np.array(["clean"] * 2), np.array(["c"] * 2))
    b = Rows(2 * np.ones((1, 3)), np.ones((1, 6)), np.array(["ood"]), np.array(["u"]))
    j = Rows.join([a, b])
    assert j.XV.shape == (3, 9) and j.XV[2, 0] == 2 and j.XV[2, 3] == 1
    picked = j.where(j.kinds == "ood")
    assert picked.groups.tolist() == ["u"] and picked.XV.tolist() == [[2, 2, 2, 1, 1, 1, 1, 1, 1]]
