"""OOD sources: registered synthetic/bundled ones and the user's own files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detectors.challenges import ChallengeContext, OutOfDistribution, parse_spec
from detectors.challenges.ood_sources import cycled_indices, sources
from detectors.data import DataError

SOURCES = sorted(sources())


def test_expected_sources_are_registered() -> None:
    assert {"uniform", "gaussian", "digits", "skimage"} <= set(SOURCES)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 20, 24)])
@pytest.mark.parametrize("source", SOURCES)
def test_source_shape_range_and_seeding(source: str, shape: tuple[int, int, int]) -> None:
    def draw(seed: int) -> np.ndarray:
        return sources()[source](5, shape, np.random.default_rng(seed))

    images = draw(0)
    assert images.shape == (5, *shape) and images.dtype == np.float32
    assert np.isfinite(images).all() and images.min() >= 0.0 and images.max() <= 1.0
    assert images.std() > 0.01  # not a constant fill
    np.testing.assert_array_equal(draw(0), images)
    assert not np.array_equal(draw(1), images)


def test_gaussian_noise_is_centred_and_clipped() -> None:
    images = sources()["gaussian"](50, (1, 28, 28), np.random.default_rng(0))
    assert abs(images.mean() - 0.5) < 0.01
    assert 0.2 < images.std() < 0.25  # sigma 0.25, slightly shrunk by clipping
    assert (images == 0.0).any() and (images == 1.0).any()


def test_skimage_patches_fit_targets_larger_than_some_photos() -> None:
    # page.png is 191 px high: it must be upscaled, not crash, for a 300-px target.
    images = sources()["skimage"](12, (1, 300, 40), np.random.default_rng(0))
    assert images.shape == (12, 1, 300, 40) and images.min() >= 0.0 and images.max() <= 1.0


def test_cycled_indices_use_every_item_before_repeating() -> None:
    idx = cycled_indices(4, 10, np.random.default_rng(0))
    assert sorted(idx[:4]) == [0, 1, 2, 3] and sorted(idx[4:8]) == [0, 1, 2, 3]
    assert set(idx[8:]) <= {0, 1, 2, 3} and len(set(idx[8:])) == 2


def _clean(n: int = 7) -> np.ndarray:
    return np.zeros((n, 1, 28, 28), dtype=np.float32)


def test_external_npz_is_conformed_and_cycled(tmp_path: Path) -> None:
    # Three flat colour images 10×10, one per colour, to be seen as 28×28 grey.
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)
    external = np.broadcast_to(colours[:, None, None, :], (3, 10, 10, 3)).copy()
    path = tmp_path / "colours.npz"
    np.savez(path, images=external)
    ood = parse_spec(f"ood:source={path}")
    out = ood.generate(ChallengeContext(_clean(7), None, None, seed=3))
    assert out.shape == (7, 1, 28, 28)
    levels = [round(float(m) * 1000) for m in out.mean(axis=(1, 2, 3))]
    assert set(levels) == {299, 587, 114}  # luminance (x1000) of pure red, green, blue
    assert len(set(levels[:3])) == 3  # every image once before any repeats
    np.testing.assert_array_equal(ood.generate(ChallengeContext(_clean(7), None, None, 3)), out)
    assert not np.array_equal(ood.generate(ChallengeContext(_clean(7), None, None, 4)), out)


def test_external_folder_larger_than_needed(tmp_path: Path) -> None:
    for i in range(6):
        Image.fromarray(np.full((12, 12), 40 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    out = OutOfDistribution(source=str(tmp_path)).generate(
        ChallengeContext(np.zeros((4, 3, 16, 16), np.float32), None, None, seed=0)
    )
    assert out.shape == (4, 3, 16, 16)
    levels = np.round(out[:, 0, 0, 0] * 255).astype(int)
    assert len(set(levels)) == 4 and set(levels) <= {0, 40, 80, 120, 160, 200}


def test_external_problems_surface_as_data_errors(tmp_path: Path) -> None:
    path = tmp_path / "broken.npz"
    np.savez(path, pictures=np.zeros((2, 8, 8)))
    ood = parse_spec(f"ood:source={path}")
    with pytest.raises(DataError, match="no 'images' array"):
        ood.generate(ChallengeContext(_clean(2), None, None, seed=0))
