"""Host-to-device staging of a batch: no copy on the CPU, a pinned buffer and an
asynchronous copy on a GPU.

A batch arrives as a NumPy array [B, C, H, W]. On the CPU the model reads it in place
(``torch.from_numpy`` shares its memory). On a GPU a copy from ordinary (pageable) memory
goes through a driver bounce buffer and blocks the host; a page-locked ("pinned") buffer,
allocated once for max_batch_size rows and reused, lets the copy run asynchronously on the
model's stream (``non_blocking=True``) while Python goes on to launch the forward pass. The
buffer is reused only after the previous batch's results were read back, which waits for
that batch's kernels (and so for its copy) to finish. There is one buffer per dtype seen
(uint8 pixels and the model's float dtype), so traffic that mixes both does not
reallocate page-locked memory at every switch.
"""

from __future__ import annotations

import numpy as np
import torch


class Staging:
    """``Staging(device, max_rows)``; ``to_device(batch)`` -> the batch as a tensor there."""

    def __init__(self, device: torch.device | str, max_rows: int) -> None:
        self.device = torch.device(device)
        self.max_rows = max_rows
        self._pinned: dict[torch.dtype, torch.Tensor] = {}

    @property
    def pinned(self) -> bool:
        """Whether batches go through a page-locked buffer (a CUDA device)."""
        return self.device.type == "cuda"

    def to_device(self, batch: np.ndarray) -> torch.Tensor:
        """batch [B, ...] (B ≤ max_rows on a GPU) -> a tensor on the device; on the CPU it
        shares the array's memory."""
        host = torch.from_numpy(np.ascontiguousarray(batch))
        if not self.pinned:
            return host.to(self.device)  # the CPU: no copy
        buf = self._pinned.get(host.dtype)
        if buf is None or buf.shape[1:] != host.shape[1:]:
            shape = (max(self.max_rows, len(host)), *host.shape[1:])
            buf = self._pinned[host.dtype] = torch.empty(shape, dtype=host.dtype, pin_memory=True)
        elif len(host) > len(buf):  # larger than announced (a calibration batch): no reuse
            return host.pin_memory().to(self.device, non_blocking=True)
        staged = buf[: len(host)]
        staged.copy_(host)
        return staged.to(self.device, non_blocking=True)
