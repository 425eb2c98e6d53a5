"""OOD sources: registered synthetic/bundled ones and the user's own files."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detectors.challenges import ChallengeContext, OutOfDistribution, parse_spec
from detectors.challenges.ood_sources import cycled_indices, sources
from detectors.data import DataError

SOURCES = sorted(sources())


def test_expected_sources_are_registered() -> None:
    expected = {"uniform", "gaussian", "digits", "skimage", "textures", "shapes", "smooth"}
    assert expected | {"glyphs"} <= set(SOURCES)


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


def test_glyphs_are_light_antialiased_strokes_on_a_dark_ground() -> None:
    images = sources()["glyphs"](40, (1, 28, 28), np.random.default_rng(0))[:, 0]
    ground = images.reshape(40, -1).min(axis=1)
    ink = images.reshape(40, -1).max(axis=1)
    assert (ground < 40 / 255 + 1e-6).all()  # the ground is drawn in [0, 40] of 255
    assert (ink > 0.6).all()  # every image has a stroke, drawn in [180, 255] of 255
    # box-filtered from 4x: stroke edges take intermediate levels, not only ground and ink
    between = (images > ground[:, None, None] + 0.1) & (images < ink[:, None, None] - 0.1)
    assert between.any(axis=(1, 2)).all()


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


def _pat(width: int, height: int, depth: int, pixels: np.ndarray, name: bytes = b"t\0") -> bytes:
    """A GIMP pattern file as GIMP writes it."""
    header = struct.pack(">5I4s", 24 + len(name), 1, width, height, depth, b"GPAT") + name
    return header + pixels.astype(np.uint8).tobytes()


def test_gimp_patterns_are_read_as_gimp_writes_them(tmp_path: Path) -> None:
    from detectors.challenges.ood_sources.textures import read_pat

    rgba = np.arange(3 * 2 * 4).reshape(3, 2, 4) * 10  # H=3, W=2, RGBA
    (tmp_path / "a.pat").write_bytes(_pat(2, 3, 4, rgba))
    image = read_pat(tmp_path / "a.pat")
    assert image.shape == (3, 3, 2) and image.dtype == np.float32  # alpha dropped
    np.testing.assert_allclose(image * 255, rgba[..., :3].transpose(2, 0, 1), atol=1e-4)
    grey = np.full((4, 5, 1), 200)
    (tmp_path / "g.pat").write_bytes(_pat(5, 4, 1, grey))
    assert read_pat(tmp_path / "g.pat").shape == (1, 4, 5)
    (tmp_path / "bad.pat").write_bytes(b"\0" * 30)
    with pytest.raises(ValueError, match="not a GIMP pattern"):
        read_pat(tmp_path / "bad.pat")


def test_textures_come_from_the_named_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A folder with one flat pattern: every crop is that grey level.
    (tmp_path / "flat.pat").write_bytes(_pat(40, 40, 1, np.full((40, 40, 1), 51)))
    monkeypatch.setenv("GRADSENTRY_TEXTURES_DIR", str(tmp_path))
    images = sources()["textures"](3, (1, 28, 28), np.random.default_rng(0))
    np.testing.assert_allclose(images, 0.2, atol=1e-6)
    monkeypatch.setenv("GRADSENTRY_TEXTURES_DIR", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="gimp-data"):
        sources()["textures"](3, (1, 28, 28), np.random.default_rng(0))
