"""ART attacks: the model is left as found, labels are optional, mistakes are explained."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from detectors.challenges import FGSM, ChallengeContext, ChallengeError, parse_spec


def test_model_state_is_restored_exactly(
    correct_digits: tuple[np.ndarray, np.ndarray], digits_model: nn.Module
) -> None:
    images, labels = correct_digits
    model = copy.deepcopy(digits_model)
    model.train()  # not how it should be called, but it must come back in train mode
    model.fc2.bias.requires_grad_(False)
    marker = torch.full_like(model.fc1.weight, 7.0)
    model.fc1.weight.grad = marker
    running_mean = model.features[1].running_mean.clone()

    parse_spec("bim:steps=3").generate(ChallengeContext(images, labels, model, seed=0))

    assert model.training and all(m.training for m in model.modules())
    assert model.fc1.weight.grad is marker
    assert all(p.grad is None for n, p in model.named_parameters() if n != "fc1.weight")
    assert not model.fc2.bias.requires_grad and model.fc1.bias.requires_grad
    # The attack ran in eval mode: BatchNorm running statistics did not move.
    assert torch.equal(model.features[1].running_mean, running_mean)


def test_attack_runs_in_eval_mode_whatever_the_callers_mode(
    correct_digits: tuple[np.ndarray, np.ndarray], digits_model: nn.Module
) -> None:
    images, labels = correct_digits
    in_train_mode = copy.deepcopy(digits_model).train()
    fgsm = FGSM(eps=0.1)
    expected = fgsm.generate(ChallengeContext(images, labels, digits_model, seed=0))
    got = fgsm.generate(ChallengeContext(images, labels, in_train_mode, seed=0))
    np.testing.assert_array_equal(got, expected)


def test_without_labels_attacks_use_the_predictions(
    correct_digits: tuple[np.ndarray, np.ndarray], digits_model: nn.Module
) -> None:
    images, labels = correct_digits  # all classified correctly: predictions == labels
    fgsm = FGSM(eps=0.1)
    with_labels = fgsm.generate(ChallengeContext(images, labels, digits_model, seed=0))
    without = fgsm.generate(ChallengeContext(images, None, digits_model, seed=0))
    np.testing.assert_array_equal(without, with_labels)


def test_fgsm_moves_every_pixel_by_eps_or_hits_the_box(
    correct_digits: tuple[np.ndarray, np.ndarray], digits_model: nn.Module
) -> None:
    images, labels = correct_digits
    out = FGSM(eps=0.1).generate(ChallengeContext(images, labels, digits_model, seed=0))
    step = np.abs(out - images)
    at_box = (out == 0.0) | (out == 1.0)
    moved = np.isclose(step, 0.1, atol=1e-6)
    assert np.all(moved | at_box)


def test_attack_needs_a_model(correct_digits: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = correct_digits
    with pytest.raises(ChallengeError, match="fgsm attacks a model"):
        FGSM().generate(ChallengeContext(images, labels, None, seed=0))


def test_labels_beyond_the_models_classes(
    correct_digits: tuple[np.ndarray, np.ndarray], digits_model: nn.Module
) -> None:
    images, labels = correct_digits
    with pytest.raises(ChallengeError, match="labels go up to 12 but the model has 10 classes"):
        FGSM().generate(ChallengeContext(images, labels + 12 - labels.max(), digits_model, seed=0))


def test_model_must_return_logits(correct_digits: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = correct_digits
    with pytest.raises(ChallengeError, match=r"must return logits \[batch, classes\]"):
        FGSM().generate(ChallengeContext(images, labels, nn.Flatten(0), seed=0))


def test_hopskipjump_is_reproducible_despite_arts_unseeded_start(
    correct_digits: tuple[np.ndarray, np.ndarray], digits_model: nn.Module
) -> None:
    images, labels = correct_digits
    hsj = parse_spec("hopskipjump:steps=1,max_eval=20,init_eval=10")
    runs = [hsj.generate(ChallengeContext(images[:3], labels[:3], digits_model, seed=5))]
    runs.append(hsj.generate(ChallengeContext(images[:3], labels[:3], digits_model, seed=5)))
    np.testing.assert_array_equal(runs[0], runs[1])
    with torch.no_grad():
        predicted = digits_model(torch.from_numpy(runs[0])).argmax(1).numpy()
    assert (predicted != labels[:3]).all()


def test_model_that_rejects_the_image_shape(correct_digits: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = correct_digits
    colour_model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    with pytest.raises(ChallengeError, match=r"rejected images of shape \(1, 28, 28\)"):
        FGSM().generate(ChallengeContext(images, labels, colour_model, seed=0))
