"""The idx reader: LeCun's format, plain and gzipped, and what it refuses."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from detectors.idx import read_idx


def _idx(array: np.ndarray) -> bytes:
    header = b"\0\0\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / f"images-idx3-ubyte{suffix}"
    path.write_bytes(gzip.compress(_idx(images)) if suffix else _idx(images))
    np.testing.assert_array_equal(read_idx(path), images)
    labels = np.array([7, 0, 255], dtype=np.uint8)
    (tmp_path / "labels").write_bytes(_idx(labels))
    np.testing.assert_array_equal(read_idx(tmp_path / "labels"), labels)


def test_refuses_what_is_not_unsigned_byte_idx(tmp_path: Path) -> None:
    cases = {
        "magic": b"PK\x03\x04" + b"\0" * 8,
        "type": b"\0\0\x0d\x01" + struct.pack(">I", 1) + b"\0" * 4,  # float32 data
        "short": _idx(np.zeros((2, 2), np.uint8))[:-1],
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(ValueError, match="bad magic"):
        read_idx(tmp_path / "magic")
    with pytest.raises(ValueError, match="only unsigned bytes"):
        read_idx(tmp_path / "type")
    with pytest.raises(ValueError, match="says 4 bytes of data, file has 3"):
        read_idx(tmp_path / "short")
