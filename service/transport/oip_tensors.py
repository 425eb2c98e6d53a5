"""The model as the Open Inference Protocol sees it: tensor names, datatypes, shapes.

Shared by both OIP transports (``oip_grpc``, ``oip_rest``), which only turn their messages
into ``InputTensor`` values and ``OutputTensor`` values back into messages.

Input: one tensor, ``INPUT_NAME`` ("input"), of the model's datatype (FP32 or FP64) and
shape [N, C, H, W] (N >= 1 inputs in one call, each scored as if sent alone). Values are
checked against the model's range and normalised like every other input
(``service.dataplane.codec``).

Outputs (every one of ``OUTPUTS`` but the features when the request names none; else
exactly those named, in that order):

- ``logits`` FP32 [N, K] and ``probabilities`` FP32 [N, K]: what the model predicts, K
  classes (the predicted class is their argmax);
- ``gradsentry_score`` FP64 [N]: the detector's probability that the input is challenging;
- ``gradsentry_flagged`` BOOL [N]: score >= the calibrated threshold (FLAGGED);
- ``gradsentry_kind`` BYTES [N]: the most likely challenge kind ("adversarial", "ood",
  "corrupted"; "" when the detector has no kinds);
- ``gradsentry_features`` FP64 [N, F]: the per-layer gradient features (only when named).

Every check runs on the declared shape before any data is touched, so a huge declared
shape with tiny data costs nothing; each error names the tensor.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.dataplane.codec import CodecError, finish, from_wire, shape_text
from service.dataplane.deadline import NO_DEADLINE
from service.dataplane.plane import ModelInfo
from service.engine.pipeline import Result
from service.errors import NotFoundError
from service.spec import InputSpec

INPUT_NAME = "input"
MODEL_VERSION = "1"
PLATFORM = "gradsentry"
# OIP datatype of each model dtype, and the little-endian numpy dtype of its raw bytes.
DATATYPE_OF = {"float32": "FP32", "float64": "FP64"}
NUMPY_OF = {
    "BOOL": np.dtype("?"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "INT64": np.dtype("<i8"),
}
FEATURES = "gradsentry_features"
# The largest parameters.timeout taken, in microseconds: past it a deadline means none.
MAX_TIMEOUT_US = int(NO_DEADLINE * 1_000_000)
# The typed-contents field (gRPC) of each input datatype.
TYPED_FIELD = {"FP32": "fp32_contents", "FP64": "fp64_contents"}


class ModelNotFoundError(NotFoundError):
    """A call names a model (or version) this server does not serve (NOT_FOUND, HTTP 404)."""


@dataclass(frozen=True)
class InputTensor:
    """One input tensor of a request, as the transport received it: ``raw`` little-endian
    bytes, or ``values`` (typed contents / JSON data, flattened in row-major order), or
    neither; ``typed_fields`` names the typed-contents fields that hold values."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes | None = None
    values: Any = None
    typed_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class OutputSpec:
    """One output the model offers: datatype, shape (-1 for the input count) and how to
    take it from the results."""

    name: str
    datatype: str
    shape: Callable[[ModelInfo, int], list[int]]
    take: Callable[[Sequence[Result]], np.ndarray]
    default: bool = True


@dataclass(frozen=True)
class OutputTensor:
    """One output of a response: ``data`` has shape ``shape``; BYTES data is an object
    array of ``bytes``."""

    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray


def _rows(values: Callable[[Result], Any], dtype: Any) -> Callable[[Sequence[Result]], np.ndarray]:
    def take(results: Sequence[Result]) -> np.ndarray:
        if len(results) == 1:  # the usual call: one input
            return np.asarray(values(results[0]), dtype=dtype)[None]
        return np.asarray([values(r) for r in results], dtype=dtype)

    return take


OUTPUTS: dict[str, OutputSpec] = {
    o.name: o
    for o in (
        OutputSpec(
            "logits",
            "FP32",
            lambda info, k: [-1, k],
            _rows(lambda r: r.logits, np.float32),
        ),
        OutputSpec(
            "probabilities",
            "FP32",
            lambda info, k: [-1, k],
            _rows(lambda r: r.probabilities, np.float32),
        ),
        OutputSpec(
            "gradsentry_score", "FP64", lambda info, k: [-1], _rows(lambda r: r.score, "<f8")
        ),
        OutputSpec(
            "gradsentry_flagged", "BOOL", lambda info, k: [-1], _rows(lambda r: r.flagged, "?")
        ),
        OutputSpec(
            "gradsentry_kind",
            "BYTES",
            lambda info, k: [-1],
            _rows(lambda r: (r.kind or "").encode(), object),
        ),
        OutputSpec(
            FEATURES,
            "FP64",
            lambda info, k: [-1, len(info.feature_names)],
            _rows(lambda r: r.features, "<f8"),
            default=False,
        ),
    )
}


def input_datatype(spec: InputSpec) -> str:
    """The OIP datatype of the model's input."""
    return DATATYPE_OF[spec.dtype]


def model_metadata(info: ModelInfo, num_classes: int) -> dict[str, Any]:
    """ModelMetadata as plain data (the REST body; the gRPC message has the same fields)."""
    return {
        "name": info.name,
        "versions": [MODEL_VERSION],
        "platform": PLATFORM,
        "inputs": [
            {
                "name": INPUT_NAME,
                "datatype": input_datatype(info.spec),
                "shape": [-1, *info.spec.shape],
            }
        ],
        "outputs": [
            {"name": o.name, "datatype": o.datatype, "shape": o.shape(info, num_classes)}
            for o in OUTPUTS.values()
        ],
    }


def check_model(name: str, version: str, served: str) -> None:
    """A call's model name and version against the served model."""
    if name != served:
        raise ModelNotFoundError(f"unknown model {name!r}: this server serves {served!r}")
    if version not in ("", MODEL_VERSION):
        raise ModelNotFoundError(
            f"unknown version {version!r} of model {served!r}: it has version {MODEL_VERSION!r}"
        )


def timeout_seconds(value: Any) -> float | None:
    """A request's ``parameters.timeout`` (integer microseconds: Triton's per-request
    timeout, what tritonclient's ``infer(timeout=...)`` sends over HTTP and gRPC) ->
    seconds; None for 0 (Triton's "no timeout")."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TIMEOUT_US:
        shown = json.dumps(value, default=str)[:64]  # as the client wrote it (JSON)
        raise CodecError(
            f"parameters.timeout must be an integer number of microseconds from 0 (none) "
            f"to {MAX_TIMEOUT_US}, got {shown}"
        )
    return value / 1_000_000 if value else None


def requested_outputs(names: Sequence[str]) -> list[OutputSpec]:
    """The outputs a request names (every default output when it names none)."""
    if not names:
        return [o for o in OUTPUTS.values() if o.default]
    chosen: list[OutputSpec] = []
    for name in names:
        spec = OUTPUTS.get(name)
        if spec is None:
            raise CodecError(f"unknown output {name!r}; this model's outputs are {list(OUTPUTS)}")
        if spec in chosen:
            raise CodecError(f"output {name!r} is requested twice")
        chosen.append(spec)
    return chosen


def the_input(inputs: Sequence[InputTensor]) -> InputTensor:
    """The request's one input tensor, named ``INPUT_NAME``."""
    names = [t.name for t in inputs]
    unknown = [n for n in names if n != INPUT_NAME]
    if unknown:
        raise CodecError(
            f"unknown input {unknown[0][:64]!r}: this model takes one input, {INPUT_NAME!r}"
        )
    if len(inputs) != 1:
        problem = "no input tensor" if not inputs else f"{len(inputs)} tensors named {INPUT_NAME!r}"
        raise CodecError(f"{problem}: this model takes one input, {INPUT_NAME!r}")
    return inputs[0]


def input_rows(tensor: InputTensor, spec: InputSpec, max_rows: int) -> int:
    """Check the tensor's datatype and declared shape [N, C, H, W] (N in 1..``max_rows``)
    against the model's, before any data is read; returns N."""
    name = tensor.name
    want = input_datatype(spec)
    if tensor.datatype != want:
        raise CodecError(
            f"input {name!r}: datatype {tensor.datatype[:32]!r}, but this model takes {want}"
        )
    shape = tensor.shape
    if len(shape) != 1 + len(spec.shape) or tuple(shape[1:]) != spec.shape:
        raise CodecError(
            f"input {name!r}: shape {shape_text(shape)}, but this model takes "
            f"[N, {', '.join(map(str, spec.shape))}]"
        )
    n = shape[0]
    if not 1 <= n <= max_rows:
        raise CodecError(
            f"input {name!r}: {n} inputs in one call (shape {shape_text(shape)}); this server "
            f"takes 1 to {max_rows} at a time: split the call"
        )
    return n


def decode_input(tensor: InputTensor, spec: InputSpec, max_rows: int) -> np.ndarray:
    """The input tensor -> array [N, C, H, W] of ``spec.dtype``, checked and normalised."""
    n = input_rows(tensor, spec, max_rows)
    name = tensor.name
    wire = NUMPY_OF[tensor.datatype]
    count = n * math.prod(spec.shape)
    if tensor.raw is not None:
        if tensor.values is not None or tensor.typed_fields:
            raise CodecError(
                f"input {name!r}: both raw_input_contents and typed contents; send one"
            )
        need = count * wire.itemsize
        if len(tensor.raw) != need:
            raise CodecError(
                f"input {name!r}: {len(tensor.raw)} bytes, but shape {shape_text(tensor.shape)} "
                f"of {tensor.datatype} needs {need}"
            )
        raw = np.frombuffer(tensor.raw, dtype=wire)
    else:
        raw = typed_values(tensor, wire, count)
    return finish(from_wire(raw.reshape(n, *spec.shape), spec), spec)


def typed_values(tensor: InputTensor, wire: np.dtype, count: int) -> np.ndarray:
    """Typed contents or JSON data -> a flat array of ``count`` values of ``wire``."""
    name = tensor.name
    own = TYPED_FIELD[tensor.datatype]
    others = [f for f in tensor.typed_fields if f != own]
    if others:
        raise CodecError(
            f"input {name!r}: contents in {others[0]}, but datatype {tensor.datatype} takes {own}"
        )
    if tensor.values is None:
        raise CodecError(f"input {name!r}: no data (neither raw_input_contents nor contents)")
    values = tensor.values
    if isinstance(values, np.ndarray):
        flat = values.reshape(-1)
    else:
        size = len(values)
        if size != count:
            raise CodecError(
                f"input {name!r}: {size} values, but shape {shape_text(tensor.shape)} needs {count}"
            )
        try:
            flat = np.asarray(values, dtype=wire)
        except (TypeError, ValueError):
            raise CodecError(f"input {name!r}: values must be numbers") from None
    if flat.ndim != 1:
        raise CodecError(f"input {name!r}: values must be numbers")
    if flat.size != count:
        raise CodecError(
            f"input {name!r}: {flat.size} values, but shape {shape_text(tensor.shape)} needs "
            f"{count}"
        )
    return flat.astype(wire, copy=False)


def outputs(results: Sequence[Result], chosen: Sequence[OutputSpec]) -> list[OutputTensor]:
    """Results of one call's N inputs -> its output tensors, in ``chosen`` order."""
    out: list[OutputTensor] = []
    for o in chosen:
        data = o.take(results)
        out.append(OutputTensor(o.name, o.datatype, list(data.shape), data))
    return out


def raw_bytes(out: OutputTensor) -> bytes:
    """An output in the raw form: little-endian values, row-major; BYTES elements each as
    a 4-byte little-endian length and its bytes (what tritonclient's
    ``deserialize_bytes_tensor`` reads)."""
    if out.datatype != "BYTES":
        return np.ascontiguousarray(out.data, dtype=NUMPY_OF[out.datatype]).tobytes()
    parts: list[bytes] = []
    for item in out.data.reshape(-1):
        parts.append(len(item).to_bytes(4, "little"))
        parts.append(item)
    return b"".join(parts)
