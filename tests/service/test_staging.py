"""Staging a batch for the device: on the CPU the model reads the array in place."""

from __future__ import annotations

import numpy as np

from service.staging import Staging


def test_the_cpu_reads_the_batch_without_a_copy() -> None:
    batch = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    staging = Staging("cpu", max_rows=8)
    x = staging.to_device(batch)
    assert not staging.pinned
    assert x.data_ptr() == batch.ctypes.data  # shares the array's memory
    np.testing.assert_array_equal(x.numpy(), batch)


def test_a_cuda_device_is_staged_through_pinned_memory() -> None:
    assert Staging("cuda:1", max_rows=8).pinned  # the buffer is made at the first batch
