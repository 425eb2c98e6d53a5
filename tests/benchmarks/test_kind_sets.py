"""The kind benchmarks' helpers: how report sets are grouped, the views as arrays, feature rows."""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.kind_ceiling import group_of
from benchmarks.kind_sets import VIEWS, Rows
from detectors.demo.datasets import FASHION, MNIST
from detectors.views import VIEWS as LIBRARY_VIEWS


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


def test_rows_keep_features_views_and_labels_aligned() -> None:
    a = Rows(np.ones((2, 3)), np.zeros((2, 6)), np.array(["clean"] * 2), np.array(["c"] * 2))
    b = Rows(2 * np.ones((1, 3)), np.ones((1, 6)), np.array(["ood"]), np.array(["u"]))
    j = Rows.join([a, b])
    assert j.XV.shape == (3, 9) and j.XV[2, 0] == 2 and j.XV[2, 3] == 1
    picked = j.where(j.kinds == "ood")
    assert picked.groups.tolist() == ["u"] and picked.XV.tolist() == [[2, 2, 2, 1, 1, 1, 1, 1, 1]]


def test_views_are_the_library_views_on_arrays() -> None:
    x = np.random.default_rng(0).random((2, 1, 6, 6)).astype(np.float32)
    for name, view in VIEWS.items():
        np.testing.assert_array_equal(view(x), LIBRARY_VIEWS[name](torch.from_numpy(x)).numpy())
