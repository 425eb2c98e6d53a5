"""Proto inputs -> validated model arrays.

``decode(request, spec)`` turns a ``CheckRequest``'s tensor or encoded image into a float
array [1, C, H, W] of ``spec.dtype`` with finite values inside ``spec.value_range``, then
applies the spec's normalisation. Every way a client can get an input wrong raises
``CodecError`` with a message that names the problem; the server maps it to
INVALID_ARGUMENT.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, UnidentifiedImageError

from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service.errors import ClientError
from service.spec import InputSpec

# DType enum value -> little-endian numpy dtype of the raw bytes.
WIRE_DTYPES: dict[int, np.dtype] = {
    pb.FLOAT32: np.dtype("<f4"),
    pb.FLOAT64: np.dtype("<f8"),
    pb.UINT8: np.dtype("u1"),
    pb.FLOAT16: np.dtype("<f2"),
}
# PIL mode each channel count is converted to.
_IMAGE_MODES: dict[int, str] = {1: "L", 3: "RGB"}
# Guard against decompression bombs: no model input is anywhere near this many pixels.
_MAX_IMAGE_PIXELS = 64_000_000


class CodecError(ClientError):
    """A client's input is malformed; the message says what is wrong."""


def dtype_name(value: int) -> str:
    """Name of a DType enum value, or "<value> (unknown)"."""
    try:
        return pb.DType.Name(value)
    except ValueError:
        return f"{value} (unknown)"


def decode(request: pb.CheckRequest, spec: InputSpec) -> np.ndarray:
    """CheckRequest -> array [1, C, H, W] of ``spec.dtype``, validated and normalised."""
    which = request.WhichOneof("input")
    if which == "tensor":
        x = decode_tensor(request.tensor, spec)
    elif which == "image":
        x = decode_image(request.image.data, spec)
    else:
        raise CodecError("empty request: set exactly one of 'tensor' or 'image'")
    return normalise(check_values(x, spec), spec)


def decode_tensor(tensor: pb.Tensor, spec: InputSpec) -> np.ndarray:
    """Tensor -> array [1, C, H, W] of ``spec.dtype`` in the spec's range (not yet checked).

    UINT8 is mapped linearly from 0..255 onto ``spec.value_range``; floats are cast.
    """
    if tensor.dtype == pb.DTYPE_UNSPECIFIED:
        raise CodecError("tensor dtype is DTYPE_UNSPECIFIED; set one of " + _dtype_choices())
    wire = WIRE_DTYPES.get(tensor.dtype)
    if wire is None:
        raise CodecError(
            f"unknown tensor dtype {dtype_name(tensor.dtype)}; use one of " + _dtype_choices()
        )
    shape = tuple(int(d) for d in tensor.shape)
    expected = spec.shape
    if shape not in (expected, (1, *expected)):
        raise CodecError(
            f"wrong tensor shape {list(shape)}: this model takes {list(expected)} "
            f"or {[1, *expected]}"
        )
    if not tensor.data:
        raise CodecError("empty tensor data: expected raw little-endian bytes")
    need = math.prod(expected) * wire.itemsize
    if len(tensor.data) != need:
        raise CodecError(
            f"tensor data has {len(tensor.data)} bytes but shape {list(shape)} of "
            f"{dtype_name(tensor.dtype)} needs {need}"
        )
    raw = np.frombuffer(tensor.data, dtype=wire).reshape(1, *expected)
    if tensor.dtype == pb.UINT8:
        return _from_uint8(raw, spec)
    return raw.astype(spec.dtype)


def decode_image(data: bytes, spec: InputSpec) -> np.ndarray:
    """PNG/JPEG bytes -> array [1, C, H, W] of ``spec.dtype`` in the spec's range.

    The image must have the model's height and width (no resizing: a silently resized input
    would be scored as something else); it is converted to "L" or "RGB" as C needs.
    """
    if not data:
        raise CodecError("empty image data: expected the bytes of a PNG or JPEG file")
    mode = _IMAGE_MODES.get(spec.channels)
    if mode is None:
        raise CodecError(
            f"this model takes {spec.channels}-channel inputs, which cannot be sent as an "
            "encoded image; send a tensor"
        )
    try:
        with Image.open(io.BytesIO(data), formats=("PNG", "JPEG")) as img:
            if img.width * img.height > _MAX_IMAGE_PIXELS:
                raise CodecError(f"image of {img.width}x{img.height} pixels is too large")
            _, h, w = spec.shape
            if (img.height, img.width) != (h, w):
                raise CodecError(
                    f"wrong image size {img.width}x{img.height} (width x height): this model "
                    f"takes {w}x{h}; resize it on the client"
                )
            pixels = np.asarray(img.convert(mode), dtype=np.uint8)
    except Image.DecompressionBombError as exc:  # PIL refuses huge headers before our check
        raise CodecError(f"image is too large: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, CodecError):
            raise
        raise CodecError(f"undecodable image (not a valid PNG or JPEG): {exc}") from exc
    chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return _from_uint8(chw[None], spec)


def check_values(x: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Refuse NaN/Inf and values outside ``spec.value_range``; return x unchanged."""
    finite = np.isfinite(x)
    if not finite.all():
        bad = x[~finite]
        n_nan = int(np.isnan(bad).sum())
        raise CodecError(f"tensor holds non-finite values: {n_nan} NaN and {bad.size - n_nan} Inf")
    lo, hi = spec.value_range
    x_min, x_max = float(x.min()), float(x.max())
    if x_min < lo or x_max > hi:
        raise CodecError(
            f"values out of range: found [{x_min:g}, {x_max:g}] but this model takes "
            f"[{lo:g}, {hi:g}]"
        )
    return x


def normalise(x: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Apply the spec's per-channel (x - mean) / std; identity when it has none."""
    if not spec.mean:
        return x
    mean = np.asarray(spec.mean, dtype=spec.dtype).reshape(1, -1, 1, 1)
    std = np.asarray(spec.std, dtype=spec.dtype).reshape(1, -1, 1, 1)
    return ((x - mean) / std).astype(spec.dtype)


def _from_uint8(x: np.ndarray, spec: InputSpec) -> np.ndarray:
    """0..255 -> spec.value_range, linearly."""
    lo, hi = spec.value_range
    scaled = x.astype(np.float64) / 255.0 * (hi - lo) + lo
    return scaled.astype(spec.dtype)


def _dtype_choices() -> str:
    return ", ".join(pb.DType.Name(v) for v in WIRE_DTYPES)
