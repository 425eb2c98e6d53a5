"""Read the idx format (LeCun's MNIST layout, also Fashion-MNIST's), plain or gzipped.

An idx file is a big-endian header — two zero bytes, a type code, the number of
dimensions — then one uint32 per dimension, then the data. Only unsigned bytes (type
0x08) occur in the image data sets this project reads.
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np

_UBYTE = 0x08


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """The array stored in an idx file (``.gz`` read through gzip): uint8, its own shape.

    Raises ValueError naming the file for anything but a well-formed unsigned-byte idx.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\0\0":
        raise ValueError(f"{path}: not an idx file (bad magic)")
    dtype, ndim = data[2], data[3]
    if dtype != _UBYTE:
        raise ValueError(f"{path}: idx type 0x{dtype:02x}; only unsigned bytes are supported")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated idx header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    n = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != n:
        raise ValueError(
            f"{path}: idx header says {n} bytes of data, file has {len(data) - header}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)
