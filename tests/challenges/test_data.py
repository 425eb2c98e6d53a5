"""detectors.data.load_images on real files written to a temporary folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detectors.data import DataError, ImageSet, conform_images, load_images

RNG = np.random.default_rng(0)
GREY_U8 = RNG.integers(0, 256, size=(5, 12, 10), dtype=np.uint8)  # [N, H, W]
RGB_U8 = RNG.integers(0, 256, size=(4, 12, 10, 3), dtype=np.uint8)  # [N, H, W, C]


def _npz(tmp_path: Path, name: str = "data.npz", **arrays: np.ndarray) -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_npz_uint8_grey_with_labels(tmp_path: Path) -> None:
    labels = np.array([3, 1, 4, 1, 5], dtype=np.int32)
    loaded = load_images(_npz(tmp_path, images=GREY_U8, labels=labels))
    assert isinstance(loaded, ImageSet) and len(loaded) == 5
    assert loaded.images.shape == (5, 1, 12, 10) and loaded.images.dtype == np.float32
    np.testing.assert_allclose(loaded.images[:, 0] * 255, GREY_U8, atol=1e-4)
    assert loaded.labels is not None and loaded.labels.dtype == np.int64
    np.testing.assert_array_equal(loaded.labels, labels)
    assert loaded.source.endswith("data.npz") and loaded.class_names is None


@pytest.mark.parametrize(
    "layout",
    [
        lambda a: a,  # [N, H, W, 3]
        lambda a: a.transpose(0, 3, 1, 2),  # [N, 3, H, W]
    ],
    ids=["nhwc", "nchw"],
)
def test_npz_float_colour_layouts(
    tmp_path: Path, layout: Callable[[np.ndarray], np.ndarray]
) -> None:
    floats = RGB_U8.astype(np.float64) / 255.0
    loaded = load_images(_npz(tmp_path, images=layout(floats)))
    assert loaded.images.shape == (4, 3, 12, 10) and loaded.labels is None
    np.testing.assert_allclose(loaded.images, floats.transpose(0, 3, 1, 2), atol=1e-6)


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_npz_single_channel_4d_layouts(tmp_path: Path, layout: str) -> None:
    four_d = GREY_U8[..., None] if layout == "nhwc" else GREY_U8[:, None]
    loaded = load_images(_npz(tmp_path, images=four_d))
    assert loaded.images.shape == (5, 1, 12, 10)
    np.testing.assert_allclose(loaded.images[:, 0], GREY_U8 / 255.0, atol=1e-6)


def test_channels_size_and_limit(tmp_path: Path) -> None:
    path = _npz(tmp_path, images=RGB_U8, labels=np.arange(4))
    grey = load_images(path, channels=1, size=(28, 20), limit=3)
    assert grey.images.shape == (3, 1, 28, 20)
    np.testing.assert_array_equal(grey.labels, [0, 1, 2])
    # Luminance matches PIL's own RGB -> L conversion (which rounds to 8 bits).
    same_size = load_images(path, channels=1)
    pil = np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in RGB_U8])
    np.testing.assert_allclose(same_size.images[:, 0] * 255, pil, atol=1.0)
    colour = load_images(_npz(tmp_path, "g.npz", images=GREY_U8), channels=3)
    assert colour.images.shape == (5, 3, 12, 10)
    np.testing.assert_array_equal(colour.images[:, 0], colour.images[:, 2])


def test_conform_resizes_bilinearly() -> None:
    ramp = np.linspace(0, 1, 8, dtype=np.float32)[None, None, None].repeat(8, axis=2)
    out = conform_images(ramp, size=(16, 16))
    assert out.shape == (1, 1, 16, 16)
    assert np.all(np.diff(out[0, 0, 0]) >= 0) and out.min() >= 0 and out.max() <= 1


def _write_class_folders(root: Path) -> None:
    (root / "cat").mkdir(parents=True)
    (root / "ant").mkdir()
    Image.fromarray(np.full((9, 7), 200, np.uint8)).save(root / "cat" / "b.png")
    Image.fromarray(np.full((9, 7), 100, np.uint8)).save(root / "cat" / "a.png")
    Image.fromarray(np.full((9, 7, 3), (250, 10, 10), np.uint8)).save(root / "ant" / "x.jpg")
    (root / "ant" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()


def test_folder_of_class_folders(tmp_path: Path) -> None:
    _write_class_folders(tmp_path)
    loaded = load_images(tmp_path)
    assert loaded.class_names == ("ant", "cat")
    np.testing.assert_array_equal(loaded.labels, [0, 1, 1])
    # One colour JPEG makes the whole set colour; grey PNGs are repeated.
    assert loaded.images.shape == (3, 3, 9, 7)
    assert loaded.images[0, 0].mean() > 0.9 and loaded.images[0, 1].mean() < 0.1
    np.testing.assert_allclose(loaded.images[1], 100 / 255, atol=1e-6)  # cat/a.png first
    np.testing.assert_allclose(loaded.images[2], 200 / 255, atol=1e-6)
    grey = load_images(tmp_path, channels=1, size=(14, 14))
    assert grey.images.shape == (3, 1, 14, 14)


def test_flat_folder_is_unlabelled(tmp_path: Path) -> None:
    for i in range(3):
        Image.fromarray(np.full((6, 6), 50 * i, np.uint8)).save(tmp_path / f"{i}.png")
    loaded = load_images(tmp_path, limit=2)
    assert loaded.labels is None and loaded.images.shape == (2, 1, 6, 6)
    np.testing.assert_allclose(loaded.images[1], 50 / 255, atol=1e-6)


def test_sixteen_bit_png_keeps_its_range(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 4), 65535 // 2, np.uint16)).save(tmp_path / "deep.png")
    loaded = load_images(tmp_path)
    np.testing.assert_allclose(loaded.images, 0.5, atol=1e-4)


# --- errors: each message names the problem ---------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or folder"):
        load_images(tmp_path / "absent.npz")


def test_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("1,2,3")
    with pytest.raises(DataError, match=r"unsupported file type '\.csv'"):
        load_images(path)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"pictures": GREY_U8}, r"no 'images' array \(found: pictures\)"),
        ({"images": GREY_U8[0]}, r"shape \(12, 10\); expected \[N, H, W\]"),
        ({"images": np.zeros((2, 1, 3, 8, 8))}, r"expected \[N, H, W\]"),
        ({"images": np.zeros((2, 8, 8, 4))}, "expected 1 or 3 channels"),
        ({"images": GREY_U8, "labels": np.arange(4)}, "labels have shape \\(4,\\) but there are 5"),
        ({"images": GREY_U8, "labels": np.zeros(5)}, "labels must be integers"),
        ({"images": np.full((2, 8, 8), np.nan)}, "NaN or infinite"),
        ({"images": np.full((2, 8, 8), 1.5)}, r"values span \[1\.5, 1\.5\]"),
        ({"images": np.full((2, 8, 8), -3, np.int16)}, r"values span \[-3, -3\]"),
        ({"images": np.full((2, 8, 8), "a")}, "dtype <U1"),
    ],
)
def test_npz_errors(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_images(_npz(tmp_path, **arrays))


def test_npz_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "objects.npz"
    np.savez(path, images=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(DataError, match=r"cannot read as \.npz"):
        load_images(path)


def test_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "fake.npz"
    path.write_bytes(b"definitely not a zip file")
    with pytest.raises(DataError, match=r"fake\.npz: cannot read as \.npz"):
        load_images(path)


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="folder has no PNG/JPEG images"):
        load_images(tmp_path)


def test_empty_class_folder(tmp_path: Path) -> None:
    _write_class_folders(tmp_path)
    (tmp_path / "dog").mkdir()
    with pytest.raises(DataError, match="dog: class folder has no PNG/JPEG images"):
        load_images(tmp_path)


def test_files_beside_class_folders(tmp_path: Path) -> None:
    _write_class_folders(tmp_path)
    Image.fromarray(np.zeros((9, 7), np.uint8)).save(tmp_path / "stray.png")
    with pytest.raises(DataError, match="both image files and sub-folders"):
        load_images(tmp_path)


def test_undecodable_image_is_named(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"broken\.png: cannot decode this image file"):
        load_images(tmp_path)


def test_mixed_sizes_ask_for_a_size(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((5, 4), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(DataError, match=r"b\.png is 5x4\); pass size="):
        load_images(tmp_path)
    assert load_images(tmp_path, size=(4, 4)).images.shape == (2, 1, 4, 4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels": 2}, "channels must be 1 or 3"),
        ({"size": (0, 4)}, "size must be"),
        ({"limit": 0}, "limit must be a positive integer"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_images(_npz(tmp_path, images=GREY_U8), **kwargs)  # type: ignore[arg-type]


def test_imageset_validates_what_it_holds() -> None:
    with pytest.raises(DataError, match="expected a float32 array"):
        ImageSet(images=np.zeros((2, 1, 4, 4)), labels=None, source="x")
    with pytest.raises(DataError, match="labels must be >= 0"):
        ImageSet(np.zeros((2, 1, 4, 4), np.float32), np.array([0, -1]), "x")
