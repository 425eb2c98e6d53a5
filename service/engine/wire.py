"""A pickle-free message format for the server and its model worker process.

``pack(meta, arrays)`` -> bytes and ``unpack(bytes)`` -> (meta, arrays): a JSON header
(``meta`` plus each array's name, dtype, shape) followed by the arrays' raw bytes. Only
plain numeric dtypes travel (no object arrays, so nothing is ever unpickled), and
``Verdicts`` — the model's answer for a batch — has its own pair of helpers.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from detectors.verdicts import Verdicts

_HEADER = struct.Struct("<I")  # length of the JSON header in bytes
_KIND_PREFIX = "kind_scores/"
_ARRAYS = ("logits", "probabilities", "score", "flagged", "features")


class WireError(ValueError):
    """A message is not in this format."""


def pack(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None) -> bytes:
    """JSON-able ``meta`` and named numeric arrays -> one message."""
    layout = []
    blobs = []
    for name, array in (arrays or {}).items():
        a = np.ascontiguousarray(array)
        if a.dtype.kind not in "biuf":
            raise WireError(f"array {name!r}: dtype {a.dtype} cannot travel (numeric only)")
        layout.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape)})
        blobs.append(a.tobytes())
    header = json.dumps({"meta": dict(meta), "arrays": layout}).encode()
    return b"".join([_HEADER.pack(len(header)), header, *blobs])


def unpack(message: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One message -> (meta, arrays); the arrays are read-only views of ``message``."""
    try:
        (n,) = _HEADER.unpack_from(message)
        header = json.loads(message[_HEADER.size : _HEADER.size + n])
        offset = _HEADER.size + n
        arrays: dict[str, np.ndarray] = {}
        for entry in header["arrays"]:
            dtype = np.dtype(entry["dtype"])
            if dtype.kind not in "biuf":
                raise WireError(f"array {entry['name']!r}: dtype {dtype} is not numeric")
            count = int(np.prod(entry["shape"], dtype=np.int64))
            arrays[entry["name"]] = np.frombuffer(
                message, dtype=dtype, count=count, offset=offset
            ).reshape(entry["shape"])
            offset += count * dtype.itemsize
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, WireError):
            raise
        raise WireError(f"malformed message: {exc}") from exc
    if offset != len(message):
        raise WireError(f"malformed message: {len(message) - offset} trailing bytes")
    return header["meta"], arrays


def pack_verdicts(v: Verdicts) -> bytes:
    """A batch's Verdicts -> one message (kind order kept)."""
    arrays = {name: getattr(v, name) for name in _ARRAYS}
    arrays.update({_KIND_PREFIX + k: s for k, s in v.kind_scores.items()})
    return pack({"timings": v.timings, "kinds": list(v.kind_scores)}, arrays)


def unpack_verdicts(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Verdicts:
    """The inverse of ``pack_verdicts`` (after ``unpack``)."""
    return Verdicts(
        **{name: arrays[name] for name in _ARRAYS},
        kind_scores={k: arrays[_KIND_PREFIX + k] for k in meta["kinds"]},
        timings={str(k): float(t) for k, t in meta["timings"].items()},
    )
