"""Contract tests run on every registered challenge (a new entry is picked up here)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from detectors.challenges import ChallengeContext, available, parse_spec

NAMES = sorted(available())


def _accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(images)).argmax(1).numpy() == labels).mean())


@pytest.fixture(scope="module")
def outputs(
    correct_digits: tuple[np.ndarray, np.ndarray], digits_model: nn.Module
) -> dict[str, np.ndarray]:
    """Filled by test_contract (seed 1, default params), reused by the accuracy test."""
    return {}


@pytest.mark.parametrize("name", NAMES)
def test_contract(
    name: str,
    correct_digits: tuple[np.ndarray, np.ndarray],
    digits_model: nn.Module,
    outputs: dict[str, np.ndarray],
) -> None:
    images, labels = correct_digits
    challenge = available()[name]()
    weights = copy.deepcopy(digits_model.state_dict())
    np_state, torch_state = np.random.get_state(), torch.random.get_rng_state()

    def run(seed: int) -> np.ndarray:
        return challenge.generate(ChallengeContext(images, labels, digits_model, seed=seed))

    first = run(1)
    outputs[name] = first
    assert first.shape == images.shape
    assert first.dtype == np.float32
    assert np.isfinite(first).all() and first.min() >= 0.0 and first.max() <= 1.0
    assert not np.array_equal(first, images), "the challenge returned its input unchanged"
    np.testing.assert_array_equal(run(1), first)  # same seed, same output
    if challenge.stochastic:
        assert not np.array_equal(run(2), first)

    # The model and the caller's random streams are left as they were.
    for key, value in digits_model.state_dict().items():
        assert torch.equal(value, weights[key]), key
    for param in digits_model.parameters():
        assert param.grad is None and param.requires_grad
    assert not digits_model.training
    restored = np.random.get_state()
    assert restored[0] == np_state[0] and np.array_equal(restored[1], np_state[1])
    assert restored[2:] == np_state[2:]
    assert torch.equal(torch.random.get_rng_state(), torch_state)


@pytest.mark.parametrize("name", NAMES)
def test_spec_round_trips(name: str) -> None:
    challenge = available()[name]()
    again = parse_spec(challenge.spec)
    assert again == challenge and again.spec == challenge.spec
    assert again.params == challenge.params
    assert challenge.kind in ("adversarial", "corrupted", "ood")


@pytest.mark.parametrize("name", [n for n in NAMES if available()[n].kind == "adversarial"])
def test_attack_fools_the_model(
    name: str,
    correct_digits: tuple[np.ndarray, np.ndarray],
    digits_model: nn.Module,
    outputs: dict[str, np.ndarray],
) -> None:
    images, labels = correct_digits
    assert _accuracy(digits_model, images, labels) == 1.0
    challenge = available()[name]()
    adversarial = outputs.get(name)
    if adversarial is None:  # test_contract was deselected
        adversarial = challenge.generate(ChallengeContext(images, labels, digits_model, seed=1))
    assert _accuracy(digits_model, adversarial, labels) <= 0.5
    if "eps" in challenge.params:  # every eps here is an L∞ budget
        budget = float(challenge.params["eps"])
        assert np.abs(adversarial - images).max() <= budget + 1e-5
