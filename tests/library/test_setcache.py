"""SetCache: generated challenge sets stored on disk, keyed by everything that shapes them."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from detectors.challenges import parse_spec
from detectors.setcache import SetCache

FGSM = "fgsm:eps=0.1"


@pytest.fixture(scope="module")
def images(digits: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [16, 1, 28, 28], int64 [16])."""
    return digits[0][:16], digits[1][:16]


def _files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.npz"))


def _generate(
    cache: SetCache,
    model: nn.Module,
    images: tuple[np.ndarray, np.ndarray],
    spec: str = FGSM,
    seed: int = 0,
) -> np.ndarray:
    return cache.generate(parse_spec(spec), model, images[0], images[1], seed=seed)


def test_second_call_reads_the_file(
    tmp_path: Path, digits_model: nn.Module, images: tuple[np.ndarray, np.ndarray]
) -> None:
    cache = SetCache(tmp_path / "sets")
    first = _generate(cache, digits_model, images)
    (file,) = _files(tmp_path / "sets")
    assert first.shape == images[0].shape and first.dtype == np.float32
    assert not np.array_equal(first, images[0])  # the attack changed the images
    with np.load(file, allow_pickle=False) as data:
        np.testing.assert_array_equal(data["images"], first)

    again = _generate(cache, digits_model, images)
    np.testing.assert_array_equal(again, first)
    # Proof that the second call read the file rather than attacking again: plant a
    # recognisable set of the right shape and get it back.
    planted = np.full_like(first, 0.25)
    np.savez(file, images=planted)
    np.testing.assert_array_equal(_generate(cache, digits_model, images), planted)
    # A fresh cache object on the same directory finds the file too.
    np.testing.assert_array_equal(_generate(SetCache(file.parent), digits_model, images), planted)
    assert _files(tmp_path / "sets") == [file]


def test_key_changes_with_seed_spec_images_and_model(
    tmp_path: Path, digits_model: nn.Module, images: tuple[np.ndarray, np.ndarray]
) -> None:
    directory = tmp_path / "sets"
    cache = SetCache(directory)
    spec = "ood:source=uniform"  # seeded and instant: the key is what is under test
    base = _generate(cache, digits_model, images, spec, seed=1)
    assert len(_files(directory)) == 1
    other_seed = _generate(cache, digits_model, images, spec, seed=2)
    assert len(_files(directory)) == 2
    assert not np.array_equal(base, other_seed)
    _generate(cache, digits_model, images, "ood:source=gaussian", seed=1)
    assert len(_files(directory)) == 3
    changed = images[0].copy()
    changed[0, 0, 0, 0] = 1.0 - changed[0, 0, 0, 0]  # one pixel differs
    _generate(cache, digits_model, (changed, images[1]), spec, seed=1)
    assert len(_files(directory)) == 4
    _generate(cache, digits_model, (images[0][:8], images[1][:8]), spec, seed=1)
    assert len(_files(directory)) == 5
    # Same everything again: no new file.
    np.testing.assert_array_equal(_generate(cache, digits_model, images, spec, seed=1), base)
    assert len(_files(directory)) == 5


def test_key_follows_weights_changed_in_place(
    tmp_path: Path, digits_model: nn.Module, images: tuple[np.ndarray, np.ndarray]
) -> None:
    """An attack depends on the weights: a model updated in place must not hit old sets."""
    model = copy.deepcopy(digits_model)
    cache = SetCache(tmp_path / "sets")
    before = _generate(cache, model, images)
    with torch.no_grad():
        model.fc2.weight.mul_(-1.0)  # flips every decision, so FGSM's direction changes
    after = _generate(cache, model, images)
    assert len(_files(tmp_path / "sets")) == 2
    assert not np.array_equal(before, after)
    np.testing.assert_array_equal(after, _generate(SetCache(None), model, images))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "wrong_shape", "no_key"])
def test_damaged_file_is_regenerated(
    tmp_path: Path,
    digits_model: nn.Module,
    images: tuple[np.ndarray, np.ndarray],
    damage: str,
) -> None:
    cache = SetCache(tmp_path / "sets")
    good = _generate(cache, digits_model, images)
    (file,) = _files(tmp_path / "sets")
    raw = file.read_bytes()
    if damage == "garbage":
        file.write_bytes(b"not an npz file" * 10)
    elif damage == "truncated":
        file.write_bytes(raw[: len(raw) // 2])
    elif damage == "empty":
        file.write_bytes(b"")
    elif damage == "wrong_shape":
        np.savez(file, images=good[:3])
    else:
        np.savez(file, other=good)
    np.testing.assert_array_equal(_generate(cache, digits_model, images), good)
    # ...and the damaged file was replaced by a good one.
    assert file.read_bytes() == raw
    assert _files(tmp_path / "sets") == [file]


def test_disabled_cache_writes_nothing(
    tmp_path: Path,
    digits_model: nn.Module,
    images: tuple[np.ndarray, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    made = _generate(SetCache(None), digits_model, images, "ood:source=uniform")
    assert made.shape == images[0].shape
    assert list(tmp_path.iterdir()) == []


def test_sets_that_ignore_the_model_are_shared_by_every_model(
    tmp_path: Path, digits_model: nn.Module, images: tuple[np.ndarray, np.ndarray]
) -> None:
    """Corruptions and OOD sets depend on the images and the seed only: another model's
    run (a retrained classifier) finds them; an attack's set it does not."""
    other = copy.deepcopy(digits_model)
    with torch.no_grad():
        other.fc2.weight.mul_(-1.0)
    cache = SetCache(tmp_path / "sets")
    for spec in ("ood:source=uniform", "corruption:type=contrast,severity=3"):
        assert not parse_spec(spec).uses_model
        first = _generate(cache, digits_model, images, spec)
        np.testing.assert_array_equal(_generate(cache, other, images, spec), first)
    assert len(_files(tmp_path / "sets")) == 2
    assert parse_spec(FGSM).uses_model
    _generate(cache, digits_model, images)
    _generate(cache, other, images)
    assert len(_files(tmp_path / "sets")) == 4
