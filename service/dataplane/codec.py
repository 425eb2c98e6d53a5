"""Decoding into the model's input spec, shared by every transport.

A transport turns its own tensor message into a raw array of the wire's dtype (or hands
over an encoded image), and ``from_wire`` / ``decode_image`` turn that into arrays
[N, C, H, W] of ``spec.dtype``, or of uint8 for pixels; ``finish`` refuses NaN/Inf and
values outside ``spec.value_range`` and applies the spec's normalisation to floats.

Pixels (uint8 tensors, decoded images) stay uint8 up to the model's device: a quarter of
the bytes to queue, copy and send, and no float pass in the server process. There
``to_model`` maps them through ``pixel_table`` — per channel, the value each of the 256
levels has after the linear map onto ``value_range`` and the normalisation, computed by
the very operations applied to a float input — so a pixel input reaches the model with
the bits it had when it was mapped here. Their range check is a check of that table.

Every way a client can get an input wrong raises ``CodecError`` with a message that names
the problem; transports map it to INVALID_ARGUMENT / HTTP 400.

An encoded image costs what its container makes the decoder do, not what its pixels are
worth: Pillow walks PNG chunks and JPEG segments in Python, one at a time, so a 28x28 PNG
padded with a million empty chunks takes seconds. ``check_container`` therefore bounds an
image's bytes (``image_byte_limit``) and walks its chunks or segments itself, counting
them against ``container_part_limit``, before Pillow sees it; both scale with the model's
input size.
"""

from __future__ import annotations

import functools
import io
import math
import struct

import numpy as np
from PIL import Image, UnidentifiedImageError

from service.errors import ClientError
from service.spec import InputSpec

# Dimensions of a client's shape quoted in full in an error message (see shape_text).
_SHAPE_DIMS = 8
# PIL mode each channel count is converted to.
_IMAGE_MODES: dict[int, str] = {1: "L", 3: "RGB"}
# Guard against decompression bombs: no model input is anywhere near this many pixels.
_MAX_IMAGE_PIXELS = 64_000_000
# Room in an encoded image for what is not pixels: an ICC profile is 0.5-4 KB, EXIF with a
# thumbnail up to 64 KB. An incompressible PNG is ~1x its raw pixels; 4x leaves margin.
_IMAGE_OVERHEAD_BYTES = 64 * 1024
_IMAGE_RAW_FACTOR = 4
# PNG chunks / JPEG segments: a dozen header parts is usual; PNG writers split pixel data
# into 8-64 KB IDAT chunks, so one more per KB of raw pixels is generous.
_CONTAINER_PARTS = 64
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class CodecError(ClientError):
    """A client's input is malformed; the message says what is wrong."""


def from_wire(raw: np.ndarray, spec: InputSpec) -> np.ndarray:
    """A raw array [N, C, H, W] of a wire dtype -> ``spec.dtype`` (not yet checked):
    floats are cast (no copy when the wire has the model's dtype); UINT8 pixels stay
    uint8 (mapped from 0..255 onto ``spec.value_range`` by ``to_model``)."""
    if raw.dtype == np.uint8:
        return raw
    return raw.astype(spec.dtype, copy=False)


def finish(x: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Floats: ``check_values`` then ``normalise``, the array the model is given. Pixels
    (uint8): ``check_pixels``, returned as they are (``to_model`` maps them later)."""
    if x.dtype == np.uint8:
        return check_pixels(x, spec)
    return normalise(check_values(x, spec), spec)


def to_model(x: np.ndarray, spec: InputSpec) -> np.ndarray:
    """An array [N, C, H, W] from ``finish`` -> what the model is given, of ``spec.dtype``:
    pixels mapped through ``pixel_table`` (bit for bit what ``normalise`` makes of them
    after the linear map), floats unchanged. The model's pipeline does the same on its
    device (``service.engine.pipeline``)."""
    if x.dtype != np.uint8:
        return x
    table = pixel_table(spec)
    out = np.empty(x.shape, table.dtype)
    for c in range(x.shape[1]):
        out[:, c] = table[c][x[:, c]]  # the fastest of the ways tried (np.take, torch)
    return out


def check_pixels(x: np.ndarray, spec: InputSpec) -> np.ndarray:
    """``check_values`` of uint8 pixels as they will be mapped, from the 256 levels'
    values (a level lands past the range's stored ends only where float64 rounding of
    the map crosses a float32 rounding tie at the top): the pixels are only read when a
    level is bad."""
    bad = _bad_levels(spec.value_range, spec.dtype)
    if bad is not None and bad[x].any():
        check_values(_from_uint8(x, spec), spec)  # raises with the usual message
    return x


def shape_text(shape: tuple[int, ...]) -> str:
    """A client's shape for an error message: whole up to ``_SHAPE_DIMS`` dimensions, else
    its first ones and its length (a message travels in a header: 6,000 dimensions would
    overflow the client's header limit and arrive as another error)."""
    if len(shape) <= _SHAPE_DIMS:
        return str(list(shape))
    head = ", ".join(str(d) for d in shape[:_SHAPE_DIMS])
    return f"[{head}, ...] ({len(shape)} dimensions)"


def decode_image(data: bytes, spec: InputSpec) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 pixels [1, C, H, W] (``finish`` and ``to_model`` map them
    onto the spec's range).

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
    check_container(data, spec)
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
    except UnidentifiedImageError:  # its message names the in-memory file object
        raise CodecError("undecodable image: not a PNG or JPEG file") from None
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, CodecError):
            raise
        raise CodecError(f"undecodable image (not a valid PNG or JPEG): {exc}") from None
    chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return np.ascontiguousarray(chw[None])


def image_byte_limit(spec: InputSpec) -> int:
    """The most bytes an encoded image of ``spec``'s size may have."""
    return _IMAGE_RAW_FACTOR * math.prod(spec.shape) + _IMAGE_OVERHEAD_BYTES


def container_part_limit(spec: InputSpec) -> int:
    """The most PNG chunks, or JPEG header segments and scans, an image may have."""
    return _CONTAINER_PARTS + math.prod(spec.shape) // 1024


def check_container(data: bytes, spec: InputSpec) -> None:
    """Refuse an image over ``image_byte_limit`` bytes, or a PNG / JPEG with more than
    ``container_part_limit`` chunks / segments, in time linear in that limit (not in the
    image's size). Other bytes pass: Pillow names what is wrong with them."""
    limit = image_byte_limit(spec)
    if len(data) > limit:
        _, h, w = spec.shape
        raise CodecError(
            f"image of {len(data)} bytes: this server takes at most {limit} bytes per "
            f"{w}x{h} image; strip metadata or send a tensor"
        )
    parts = container_part_limit(spec)
    if data.startswith(_PNG_SIGNATURE):
        count = _png_chunks(data, parts)
    elif data.startswith(b"\xff\xd8"):
        count = _jpeg_segments(data, parts)
    else:
        return
    if count > parts:
        raise CodecError(
            f"image has more than {parts} PNG chunks or JPEG segments; a {spec.shape[2]}x"
            f"{spec.shape[1]} image needs far fewer: re-encode it without extra metadata"
        )


def _png_chunks(data: bytes, limit: int) -> int:
    """PNG chunks up to IEND, counting no further than ``limit`` + 1."""
    offset, count = len(_PNG_SIGNATURE), 0
    while offset + 8 <= len(data) and count <= limit:
        length, kind = struct.unpack_from(">I4s", data, offset)
        count += 1
        offset += 12 + length  # length, type, data, CRC
        if kind == b"IEND":
            break
    return count


def _jpeg_segments(data: bytes, limit: int) -> int:
    """JPEG header segments up to the first scan, plus the scans (start-of-scan markers: in
    entropy-coded data 0xFF is always followed by 0x00 or a restart marker)."""
    offset, count = 2, 0
    while offset + 4 <= len(data) and count <= limit:
        if data[offset] != 0xFF:
            return count  # not a marker: let Pillow say what is wrong
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        count += 1
        if marker == 0xDA:  # start of scan: the rest is entropy-coded data and scans
            break
        (length,) = struct.unpack_from(">H", data, offset + 2)
        offset += 2 + length
    return count + data.count(b"\xff\xda", offset + 2)


def check_values(x: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Refuse NaN/Inf and values outside ``spec.value_range`` (its ends as ``spec.dtype``
    stores them: ``_model_bounds``); return x unchanged."""
    # Two passes and no temporary: a NaN makes min() NaN, an Inf shows in min() or max().
    x_min, x_max = float(x.min()), float(x.max())
    if not (math.isfinite(x_min) and math.isfinite(x_max)):
        bad = x[~np.isfinite(x)]
        n_nan = int(np.isnan(bad).sum())
        raise CodecError(f"tensor holds non-finite values: {n_nan} NaN and {bad.size - n_nan} Inf")
    lo, hi = _model_bounds(spec.value_range, spec.dtype)
    if x_min < lo or x_max > hi:
        lo, hi = spec.value_range
        # repr: the shortest text that reads back as the same number, so 1.0000001 does not
        # print as 1 (":g" keeps 6 digits).
        raise CodecError(
            f"values out of range: found [{x_min!r}, {x_max!r}] but this model takes "
            f"[{lo!r}, {hi!r}]"
        )
    return x


def normalise(x: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Apply the spec's per-channel (x - mean) / std; identity when it has none."""
    if not spec.mean:
        return x
    mean = np.asarray(spec.mean, dtype=spec.dtype).reshape(1, -1, 1, 1)
    std = np.asarray(spec.std, dtype=spec.dtype).reshape(1, -1, 1, 1)
    out = np.subtract(x, mean, dtype=spec.dtype)  # one new array, divided in place
    return np.divide(out, std, out=out)


def _from_uint8(x: np.ndarray, spec: InputSpec) -> np.ndarray:
    """0..255 -> spec.value_range, linearly: one lookup per pixel in a 256-entry table of
    ``spec.dtype`` (computed in float64 and rounded once, so each value is what the float64
    formula gives, without a float64 copy of the image)."""
    return _uint8_table(spec.value_range, spec.dtype)[x]


@functools.lru_cache(maxsize=16)
def pixel_table(spec: InputSpec) -> np.ndarray:
    """[C, 256] of ``spec.dtype``: what the model is given for each channel and level, by
    the operations a float input goes through (``_from_uint8`` then ``normalise``)."""
    levels = np.arange(256, dtype=np.uint8)[None, None, None, :]  # [1, 1, 1, 256]
    levels = np.broadcast_to(levels, (1, spec.channels, 1, 256))
    table = np.ascontiguousarray(normalise(_from_uint8(levels, spec), spec)[0, :, 0, :])
    table.flags.writeable = False
    return table


@functools.lru_cache(maxsize=16)
def _model_bounds(value_range: tuple[float, ...], dtype: str) -> tuple[float, float]:
    """``value_range`` widened to its ends as ``dtype`` stores them: in float32 the range
    [0, 0.1] ends at 0.1000000015, which is what a client's float32 0.1 and a white
    pixel become, so both are inside it; a value past that end is still refused."""
    lo, hi = value_range
    stored = np.asarray(value_range, dtype=np.float64).astype(dtype).astype(np.float64)
    return min(lo, float(stored[0])), max(hi, float(stored[1]))


@functools.lru_cache(maxsize=16)
def _bad_levels(value_range: tuple[float, ...], dtype: str) -> np.ndarray | None:
    """[256] bool: the levels whose mapped value ``check_values`` refuses; None if none."""
    x = _uint8_table(value_range, dtype).astype(np.float64)  # compared as check_values does
    lo, hi = _model_bounds(value_range, dtype)
    bad = ~np.isfinite(x) | (x < lo) | (x > hi)
    return bad if bad.any() else None


@functools.lru_cache(maxsize=16)
def _uint8_table(value_range: tuple[float, ...], dtype: str) -> np.ndarray:
    lo, hi = value_range
    table = (np.arange(256, dtype=np.float64) / 255.0 * (hi - lo) + lo).astype(dtype)
    table.flags.writeable = False
    return table
