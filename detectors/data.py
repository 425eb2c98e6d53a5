"""Loading the images a user names: an ``.npz`` file or a folder of image files.

Everything comes back in the project's image convention: float32 ``[N, C, H, W]`` in
``[0, 1]`` (C is 1 or 3), labels int64 ``[N]`` when the source has them.

- ``.npz``: an ``images`` array (uint8 0..255, another integer type within 0..255, or
  floats in [0, 1]) laid out ``[N, H, W]``, ``[N, H, W, C]`` or ``[N, C, H, W]`` with C in
  {1, 3}, and an optional integer ``labels`` array ``[N]``. Loaded without pickle.
- A folder of PNG/JPEG (also BMP/WebP) files, read in sorted name order, unlabelled; or a
  folder of class folders (``root/<class>/<image>``): labels are the class folders'
  positions in sorted name order. Hidden entries (``.name``) and other files are ignored.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
# ITU-R BT.601 luma weights: what PIL's "L" conversion uses, so a colour image converted
# here matches one converted by PIL.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class DataError(ValueError):
    """The named data cannot be loaded or conformed; the message says what to change."""


@dataclass
class ImageSet:
    """Images loaded from one source.

    images: float32 ``[N, C, H, W]`` in ``[0, 1]``, C in {1, 3}.
    labels: int64 ``[N]`` or None when the source has no labels.
    source: where the images came from (a path), for reports.
    class_names: for a folder of class folders, the class of each label value.
    """

    images: np.ndarray
    labels: np.ndarray | None
    source: str
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_images(self.images, what=self.source)
        if self.labels is not None:
            self.labels = check_labels(self.labels, len(self.images), what=self.source)

    def __len__(self) -> int:
        return len(self.images)


def check_images(images: np.ndarray, *, what: str = "images") -> None:
    """Raise DataError unless ``images`` is float32 ``[N, C, H, W]``, C in {1, 3}, in [0, 1]."""
    if not isinstance(images, np.ndarray) or images.dtype != np.float32 or images.ndim != 4:
        desc = (
            f"{images.dtype} array of shape {images.shape}"
            if isinstance(images, np.ndarray)
            else type(images).__name__
        )
        raise DataError(f"{what}: expected a float32 array [N, C, H, W], got {desc}")
    if images.shape[1] not in (1, 3):
        raise DataError(f"{what}: expected 1 or 3 channels, got shape {images.shape}")
    _check_range(images, 0.0, 1.0, what=what)


def check_labels(labels: np.ndarray, n: int, *, what: str = "labels") -> np.ndarray:
    """Return ``labels`` as int64 ``[n]``; raise DataError for a wrong shape, type or sign."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n:
        raise DataError(f"{what}: labels have shape {labels.shape} but there are {n} images")
    if labels.dtype.kind not in "iu":
        raise DataError(f"{what}: labels must be integers, got dtype {labels.dtype}")
    if n and labels.min() < 0:
        raise DataError(f"{what}: labels must be >= 0, found {labels.min()}")
    return labels.astype(np.int64)


def _check_range(values: np.ndarray, lo: float, hi: float, *, what: str) -> None:
    if values.size == 0:
        return
    if not np.isfinite(values).all():
        raise DataError(f"{what}: images contain NaN or infinite values")
    vmin, vmax = float(values.min()), float(values.max())
    if vmin < lo or vmax > hi:
        raise DataError(
            f"{what}: values span [{vmin:g}, {vmax:g}]; expected floats in [0, 1] "
            "or integers in 0..255"
        )


def load_images(
    path: str | Path,
    *,
    channels: int | None = None,
    size: tuple[int, int] | None = None,
    limit: int | None = None,
) -> ImageSet:
    """Load an ``.npz`` file or an image folder as float32 ``[N, C, H, W]`` in [0, 1].

    Args:
        path: an ``.npz`` file or a folder (see the module docstring for both formats).
        channels: 1 or 3 to convert colour to grey by luminance or grey to colour by
            repetition; None keeps the source's channels (a folder mixing grey and colour
            images loads as colour).
        size: (H, W) to resize every image to with PIL bilinear; None keeps the source
            size (a folder's images must then all have one size).
        limit: load at most the first ``limit`` images (file order).

    Raises:
        DataError: with a one-line message naming the problem and the file.
    """
    if channels is not None and channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels!r}")
    if size is not None and (len(size) != 2 or any(not isinstance(s, int) or s < 1 for s in size)):
        raise DataError(f"size must be (height, width) with positive integers, got {size!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit must be a positive integer, got {limit!r}")
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        images, labels, classes = _load_folder(path, channels=channels, size=size, limit=limit)
    elif path.suffix.lower() == ".npz":
        images, labels = _load_npz(path, limit=limit)
        classes = None
    else:
        raise DataError(
            f"{path}: unsupported file type {path.suffix!r}; give an .npz file or a folder "
            "of PNG/JPEG images"
        )
    images = conform_images(images, channels=channels, size=size)
    return ImageSet(images=images, labels=labels, source=str(path), class_names=classes)


def conform_images(
    images: np.ndarray, *, channels: int | None = None, size: tuple[int, int] | None = None
) -> np.ndarray:
    """Convert float32 ``[N, C, H, W]`` images (C in {1, 3}) to ``channels`` and ``size``.

    Colour to grey uses BT.601 luminance, grey to colour repeats the channel, resizing is
    PIL bilinear per channel in float precision. Returns float32 ``[N, channels, *size]``
    in [0, 1] (the input itself when nothing changes).
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise DataError(f"expected images [N, C, H, W] with C in {{1, 3}}, got {images.shape}")
    if channels is not None and channels != images.shape[1]:
        if channels == 1:
            images = np.einsum("nchw,c->nhw", images, LUMA)[:, None]
        elif channels == 3:
            images = np.repeat(images, 3, axis=1)
        else:
            raise DataError(f"channels must be 1 or 3, got {channels!r}")
    if size is not None and tuple(size) != images.shape[2:]:
        height, width = size
        out = np.empty((*images.shape[:2], height, width), dtype=np.float32)
        for i, image in enumerate(images):
            for c, plane in enumerate(image):
                # A float32 plane opens as PIL mode "F": resampled without 8-bit rounding.
                resized = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32)).resize(
                    (width, height), Image.Resampling.BILINEAR
                )
                out[i, c] = np.asarray(resized)
        images = out
    return np.clip(images, 0.0, 1.0).astype(np.float32, copy=False)


def _load_npz(path: Path, *, limit: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Read ``images`` (any supported layout) and optional ``labels`` from an npz file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "images" not in data.files:
                raise DataError(
                    f"{path}: no 'images' array (found: {', '.join(data.files) or 'none'})"
                )
            raw = data["images"]
            labels = data["labels"] if "labels" in data.files else None
    except DataError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: cannot read as .npz ({exc})") from exc
    if labels is not None:
        labels = check_labels(labels, len(raw), what=str(path))
    images = _to_nchw(raw, what=str(path))
    if limit is not None:
        images = images[:limit]
        labels = None if labels is None else labels[:limit]
    return _to_unit_float(images, what=str(path)), labels


def _to_nchw(raw: np.ndarray, *, what: str) -> np.ndarray:
    """Arrange ``[N, H, W]``, ``[N, C, H, W]`` or ``[N, H, W, C]`` (C in {1, 3}) as NCHW.

    An array that could be either 4-D layout (e.g. ``[N, 3, 5, 3]``) is read as NCHW, the
    project's convention.
    """
    if raw.ndim == 3:
        return raw[:, None]
    if raw.ndim == 4:
        if raw.shape[1] in (1, 3):
            return raw
        if raw.shape[3] in (1, 3):
            return raw.transpose(0, 3, 1, 2)
        raise DataError(
            f"{what}: images have shape {raw.shape}; expected 1 or 3 channels as "
            "[N, C, H, W] or [N, H, W, C]"
        )
    raise DataError(
        f"{what}: images have shape {raw.shape}; expected [N, H, W], [N, H, W, C] or [N, C, H, W]"
    )


def _to_unit_float(images: np.ndarray, *, what: str) -> np.ndarray:
    """Integers 0..255 are scaled by 1/255; floats must already lie in [0, 1]."""
    if images.dtype.kind in "iu":
        _check_range(images, 0, 255, what=what)
        return images.astype(np.float32) / np.float32(255.0)
    if images.dtype.kind == "b":
        return images.astype(np.float32)
    if images.dtype.kind == "f":
        _check_range(images, 0.0, 1.0, what=what)
        return images.astype(np.float32)
    raise DataError(f"{what}: images have dtype {images.dtype}; expected uint8 or float")


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _load_folder(
    root: Path, *, channels: int | None, size: tuple[int, int] | None, limit: int | None
) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...] | None]:
    """Decode a flat image folder or a folder of class folders to NCHW float32."""
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = _image_files(root)
    labels: list[int] | None = None
    classes: tuple[str, ...] | None = None
    if class_dirs and files:
        raise DataError(
            f"{root}: holds both image files and sub-folders; put every image in a class "
            "folder or use a flat folder"
        )
    if class_dirs:
        classes = tuple(d.name for d in class_dirs)
        labels = []
        for label, class_dir in enumerate(class_dirs):
            class_files = _image_files(class_dir)
            if not class_files:
                raise DataError(f"{class_dir}: class folder has no PNG/JPEG images")
            files += class_files
            labels += [label] * len(class_files)
    if not files:
        raise DataError(f"{root}: folder has no PNG/JPEG images")
    if limit is not None:
        files = files[:limit]
        labels = None if labels is None else labels[:limit]
    decoded = [_decode(f) for f in files]
    if channels is None:
        channels = max(image.shape[0] for image in decoded)
    decoded = [conform_images(image[None], channels=channels, size=size)[0] for image in decoded]
    shapes = {image.shape for image in decoded}
    if len(shapes) > 1:
        first = decoded[0].shape
        odd = next(i for i, image in enumerate(decoded) if image.shape != first)
        raise DataError(
            f"{root}: images differ in size ({files[0].name} is {first[1]}x{first[2]}, "
            f"{files[odd].name} is {decoded[odd].shape[1]}x{decoded[odd].shape[2]}); "
            "pass size=(height, width)"
        )
    array = np.stack(decoded)
    return array, None if labels is None else np.asarray(labels, dtype=np.int64), classes


def _decode(path: Path) -> np.ndarray:
    """One image file as float32 ``[C, H, W]`` in [0, 1]; grey modes give C=1, others C=3."""
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode.startswith("I;16") or mode == "I":
                # 16-bit PNGs open as "I;16"/"I": scale their full range, not clip to 8 bits.
                array = np.asarray(image, dtype=np.float32)[None] / np.float32(65535.0)
            elif mode == "F":
                array = np.asarray(image, dtype=np.float32)[None]
            elif mode in ("1", "L", "LA"):
                array = (np.asarray(image.convert("L"), dtype=np.float32) / 255.0)[None]
            else:
                rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
                array = rgb.transpose(2, 0, 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: cannot decode this image file ({exc})") from exc
    _check_range(array, 0.0, 1.0, what=str(path))
    return array.astype(np.float32, copy=False)
