"""gradsentry.v1 inputs -> validated model arrays.

``decode(request, spec)`` turns a ``CheckRequest``'s tensor or encoded image into a float
array [1, C, H, W] of ``spec.dtype`` with finite values inside ``spec.value_range``, then
applies the spec's normalisation (``service.dataplane.codec``). A malformed input raises
``CodecError`` naming the problem (INVALID_ARGUMENT).
"""

from __future__ import annotations

import math

import numpy as np

from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service.dataplane.codec import CodecError, decode_image, finish, from_wire, shape_text
from service.spec import InputSpec

# DType enum value -> little-endian numpy dtype of the raw bytes.
WIRE_DTYPES: dict[int, np.dtype] = {
    pb.FLOAT32: np.dtype("<f4"),
    pb.FLOAT64: np.dtype("<f8"),
    pb.UINT8: np.dtype("u1"),
    pb.FLOAT16: np.dtype("<f2"),
}


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
    return finish(x, spec)


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
            f"wrong tensor shape {shape_text(shape)}: this model takes {list(expected)} "
            f"or {[1, *expected]}"
        )
    if not tensor.data:
        raise CodecError("empty tensor data: expected raw little-endian bytes")
    need = math.prod(expected) * wire.itemsize
    if len(tensor.data) != need:
        raise CodecError(
            f"tensor data has {len(tensor.data)} bytes but shape {shape_text(shape)} of "
            f"{dtype_name(tensor.dtype)} needs {need}"
        )
    return from_wire(np.frombuffer(tensor.data, dtype=wire).reshape(1, *expected), spec)


def _dtype_choices() -> str:
    return ", ".join(pb.DType.Name(v) for v in WIRE_DTYPES)
