"""Stage timers: how long the forward and the backward of one batch took, on its device.

On the CPU a kernel has finished when its Python call returns, so ``time.perf_counter`` at
each stage boundary measures the stage. On a GPU a call returns once its kernels are
queued: host clocks would measure launches, and the GPU time would land on whichever later
call blocks first. ``CudaEventTimer`` records a CUDA event on the device's stream at each
boundary and synchronises once, on the last event, when the intervals are read (once per
batch).

``timer_for(device)`` picks the timer; each has ``mark()`` (a stage boundary, in order) and
``intervals()`` (seconds between consecutive marks).
"""

from __future__ import annotations

import time
from typing import Protocol

import torch


class StageTimer(Protocol):
    """``mark()`` at each stage boundary; ``intervals()`` -> seconds between marks."""

    def mark(self) -> None: ...

    def intervals(self) -> list[float]: ...


class HostTimer:
    """Stage boundaries by ``time.perf_counter`` (the CPU: a returned call has finished)."""

    def __init__(self) -> None:
        self._marks: list[float] = []

    def mark(self) -> None:
        self._marks.append(time.perf_counter())

    def intervals(self) -> list[float]:
        return [b - a for a, b in zip(self._marks, self._marks[1:], strict=False)]


class CudaEventTimer:
    """Stage boundaries by CUDA events on ``device``'s current stream; ``intervals`` waits
    for the last event (the one synchronisation) and reads the GPU's own clock."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._events: list[torch.cuda.Event] = []

    def mark(self) -> None:
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        self._events.append(event)

    def intervals(self) -> list[float]:
        if not self._events:
            return []
        self._events[-1].synchronize()
        pairs = zip(self._events, self._events[1:], strict=False)
        return [a.elapsed_time(b) / 1000.0 for a, b in pairs]  # ms -> s


def timer_for(device: torch.device | str) -> StageTimer:
    """A ``CudaEventTimer`` for a CUDA device, else a ``HostTimer``."""
    device = torch.device(device)
    return CudaEventTimer(device) if device.type == "cuda" else HostTimer()
