"""model_fingerprint: stable for the same weights, different for any changed value."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from detectors.bundle import model_fingerprint
from detectors.demo.model import MnistCNN


@pytest.fixture()
def model() -> MnistCNN:
    """The demo CNN, freshly seeded (training would not change what is being tested)."""
    torch.manual_seed(0)
    return MnistCNN().eval()


def test_fingerprint_format_and_stability(model: MnistCNN) -> None:
    fp = model_fingerprint(model)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", fp)
    assert model_fingerprint(model) == fp
    assert model_fingerprint(copy.deepcopy(model)) == fp
    torch.manual_seed(1)
    assert model_fingerprint(MnistCNN()) != fp


def test_one_weight_changes_the_fingerprint(model: MnistCNN) -> None:
    before = model_fingerprint(model)
    with torch.no_grad():  # the smallest possible change: one ulp of one weight
        model.fc2.weight[3, 7] = torch.nextafter(model.fc2.weight[3, 7], torch.tensor(1.0))
    assert model_fingerprint(model) != before


def test_a_batchnorm_running_stat_changes_the_fingerprint(model: MnistCNN) -> None:
    before = model_fingerprint(model)
    bn = model.features[1]
    assert isinstance(bn, torch.nn.BatchNorm2d)
    bn.running_var[0] += 1e-3
    assert model_fingerprint(model) != before


def test_names_and_shapes_are_part_of_the_hash() -> None:
    torch.manual_seed(0)
    a = torch.nn.Linear(4, 6, bias=False)
    b = torch.nn.Linear(6, 4, bias=False)
    with torch.no_grad():
        b.weight.copy_(a.weight.reshape(4, 6))  # same bytes, same name, other shape
    assert model_fingerprint(b) != model_fingerprint(a)
    assert model_fingerprint(torch.nn.Sequential(a)) != model_fingerprint(a)  # "0.weight"


def test_rejects_non_modules() -> None:
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        model_fingerprint({"weight": torch.zeros(2)})  # type: ignore[arg-type]
