"""The 15 common corruptions on grey and colour images, padding and seeding."""

from __future__ import annotations

import numpy as np
import pytest
from imagecorruptions import get_corruption_names

from detectors.challenges import ChallengeContext, Corruption
from detectors.challenges.corruption import COMMON, DETERMINISTIC


@pytest.fixture(scope="module")
def grey(digits: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Three digits, float32 [3, 1, 28, 28]."""
    return digits[0][:3]


@pytest.fixture(scope="module")
def colour(grey: np.ndarray) -> np.ndarray:
    """The digits tinted differently per channel on a mid-grey ground, float32 [3, 3, 28, 28]."""
    return np.concatenate([0.2 + 0.8 * grey, 0.6 * (1 - grey), 0.3 + 0.2 * grey], axis=1)


def _run(images: np.ndarray, corruption: str, severity: int, seed: int = 0) -> np.ndarray:
    challenge = Corruption(type=corruption, severity=severity)
    return challenge.generate(ChallengeContext(images, None, None, seed=seed))


def test_the_fifteen_common_corruptions_are_covered() -> None:
    assert COMMON == tuple(get_corruption_names("common")) and len(COMMON) == 15


@pytest.mark.parametrize("severity", [1, 5])
@pytest.mark.parametrize("corruption", COMMON)
@pytest.mark.parametrize("which", ["grey", "colour"])
def test_corruption_changes_the_image_and_stays_in_range(
    which: str, corruption: str, severity: int, request: pytest.FixtureRequest
) -> None:
    images: np.ndarray = request.getfixturevalue(which)
    out = _run(images, corruption, severity)
    assert out.shape == images.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    changed = np.abs(out - images).reshape(len(images), -1).max(axis=1)
    assert (changed > 0.02).all(), f"{corruption} left an image (nearly) unchanged"
    np.testing.assert_array_equal(_run(images, corruption, severity), out)
    if corruption not in DETERMINISTIC:
        assert not np.array_equal(_run(images, corruption, severity, seed=1), out)


def test_stronger_severity_moves_further(grey: np.ndarray) -> None:
    for corruption in ("gaussian_noise", "contrast", "defocus_blur"):
        mild = np.abs(_run(grey, corruption, 1) - grey).mean()
        harsh = np.abs(_run(grey, corruption, 5) - grey).mean()
        assert harsh > mild, corruption


def test_grey_noise_keeps_the_strength_the_severity_defines() -> None:
    # Severity 5 Gaussian noise has sigma 0.38 per pixel; averaging three channel draws
    # (a luminance conversion) would leave about two thirds of that.
    grey_level = np.float32(128 / 255)  # exactly representable in uint8
    flat = np.full((4, 1, 28, 28), grey_level, dtype=np.float32)
    noise = _run(flat, "gaussian_noise", 5) - grey_level
    assert 0.28 < noise.std() < 0.36
    # Salt and pepper stays salt and pepper: no greys from mixing channels.
    values = np.unique(_run(flat, "impulse_noise", 5))
    np.testing.assert_allclose(values, [0.0, grey_level, 1.0], atol=1e-6)


def test_each_image_depends_only_on_itself_seed_and_index(grey: np.ndarray) -> None:
    other = grey.copy()
    other[0] = 1.0 - other[0]
    a, b = _run(grey, "snow", 3), _run(other, "snow", 3)
    np.testing.assert_array_equal(a[1:], b[1:])
    assert not np.array_equal(a[0], b[0])


@pytest.mark.parametrize("shape", [(2, 3, 40, 36), (2, 1, 8, 8), (1, 1, 32, 20)])
def test_other_sizes_are_padded_or_left_alone(shape: tuple[int, int, int, int]) -> None:
    rng = np.random.default_rng(0)
    images = rng.random(shape, dtype=np.float32)
    for corruption in ("zoom_blur", "fog", "pixelate"):
        out = _run(images, corruption, 3)
        assert out.shape == shape and np.isfinite(out).all()
        assert not np.array_equal(out, images)


def test_held_out_validation_corruptions_are_accepted(grey: np.ndarray) -> None:
    for corruption in get_corruption_names("validation"):
        out = _run(grey, corruption, 3)
        assert out.shape == grey.shape and not np.array_equal(out, grey)


def test_progress_bar_on_request(grey: np.ndarray, capsys: pytest.CaptureFixture[str]) -> None:
    challenge = Corruption(type="contrast", severity=2)
    quiet = challenge.generate(ChallengeContext(grey, None, None, seed=0))
    assert "contrast" not in capsys.readouterr().err
    loud = challenge.generate(ChallengeContext(grey, None, None, seed=0, progress=True))
    err = capsys.readouterr().err
    assert "contrast" in err and "3/3" in err
    np.testing.assert_array_equal(loud, quiet)
