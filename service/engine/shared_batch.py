"""Batches for the model worker through shared memory: only a small header on the socket.

Over the socket a batch is copied into a message (``wire.pack``), through the kernel twice
and out of the message again in the worker: about five copies of 38 MB at 64x3x224²,
most of them in the low-priority gRPC process (docs/gpu.md, *The batch path*). Here the
server process writes the batch once, straight from the decoded inputs into a slot of a
buffer it shares with its worker, and sends the slot's number, dtype and shape; the
worker's model reads the slot in place (``torch.from_numpy``: no copy on the CPU; on a
GPU one copy into the pinned staging buffer, ``service.staging``).

The buffer is an anonymous shared-memory file (Linux ``memfd_create``), not a name in
``/dev/shm``: its descriptor is handed to the worker over their socket pair
(``SCM_RIGHTS``), so there is no name to unlink and nothing to leak when either process
is killed (the memory goes when the last process holding it does), and it is not bounded
by the size of a container's ``/dev/shm`` (64 MiB by default in Kubernetes and Docker);
it is counted in the container's memory. Its pages are reserved when it is made
(``posix_fallocate``), so a short machine refuses it then instead of killing a process
with SIGBUS mid-batch. One buffer is made per worker (a restarted worker gets a fresh
one) with one slot per batch the batcher may have in flight, each sized for
``max_batch_size`` inputs. When it cannot be made, or a batch does not fit its slot or
finds no free slot, the batch goes
over the socket as before.

A slot is written only while no batch in it is with the worker: it is taken when the batch
is sent and given back when its answer (or the worker's death) arrives.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import socket
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

NAME = "gradsentry-batches"  # shown in /proc/<pid>/maps and /proc/<pid>/fd
_ALIGN = mmap.PAGESIZE  # each slot starts on a page


class SharedBatchError(RuntimeError):
    """The shared buffer cannot be made or attached (the caller falls back to the socket)."""


def slot_size(rows: int, shape: Sequence[int], dtype: str | np.dtype) -> int:
    """Bytes of a slot for ``rows`` inputs of ``shape`` and ``dtype``, rounded up to a page."""
    need = rows * math.prod(shape) * np.dtype(dtype).itemsize
    return -(-need // _ALIGN) * _ALIGN


class _Mapping:
    """``slots`` slots of ``slot_bytes`` each in one shared mapping of ``fd``."""

    def __init__(self, fd: int, slots: int, slot_bytes: int) -> None:
        if slots < 1 or slot_bytes < 1 or slot_bytes % _ALIGN:
            raise SharedBatchError(f"bad layout: {slots} slots of {slot_bytes} bytes")
        self.slots = slots
        self.slot_bytes = slot_bytes
        # mmap keeps its own duplicate of fd; the mapping lives while an array views it.
        self._bytes = np.frombuffer(mmap.mmap(fd, slots * slot_bytes), np.uint8)

    def array(self, slot: int, dtype: str | np.dtype, shape: Sequence[int]) -> np.ndarray:
        """A writable view of ``slot`` as an array of ``shape`` and ``dtype``."""
        dt = np.dtype(dtype)
        if dt.kind not in "biuf":
            raise SharedBatchError(f"dtype {dt} cannot travel (numeric only)")
        count = math.prod(shape)
        if not 0 <= slot < self.slots or count < 0 or count * dt.itemsize > self.slot_bytes:
            raise SharedBatchError(
                f"{list(shape)} of {dt} does not fit slot {slot} of {self.slots} "
                f"({self.slot_bytes} bytes)"
            )
        start = slot * self.slot_bytes
        return self._bytes[start : start + count * dt.itemsize].view(dt).reshape(shape)


class SharedBatches:
    """The server's side: makes the buffer, hands it to a worker, fills its slots.

    ``SharedBatches(slots, slot_bytes)`` raises ``SharedBatchError`` when the buffer
    cannot be made; ``create`` returns None instead, with one log line.
    """

    def __init__(self, slots: int, slot_bytes: int) -> None:
        if not hasattr(os, "memfd_create"):
            raise SharedBatchError("this system has no memfd_create (Linux only)")
        size = slots * slot_bytes
        fd = -1
        try:
            fd = os.memfd_create(NAME, os.MFD_CLOEXEC)
            os.ftruncate(fd, size)
            os.posix_fallocate(fd, 0, size)  # the pages now, not a SIGBUS later
            self._map = _Mapping(fd, slots, slot_bytes)
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
            raise SharedBatchError(
                f"cannot make a shared buffer of {size / 2**20:.1f} MiB: {exc}"
            ) from exc
        self._fd: int | None = fd
        self._free = list(range(slots))
        self._lock = threading.Lock()

    @classmethod
    def create(cls, slots: int, slot_bytes: int) -> SharedBatches | None:
        """A buffer, or None (logged) when this machine cannot make one."""
        try:
            return cls(slots, slot_bytes)
        except SharedBatchError as exc:
            log.warning("batches go to the model worker over its socket: %s", exc)
            return None

    @property
    def slots(self) -> int:
        """Number of slots."""
        return self._map.slots

    @property
    def slot_bytes(self) -> int:
        """Bytes per slot."""
        return self._map.slot_bytes

    @property
    def layout(self) -> dict[str, int]:
        """What the worker needs to map the buffer (sent with its descriptor)."""
        return {"slots": self.slots, "slot_bytes": self.slot_bytes}

    def send_to(self, conn: Any) -> None:
        """Hand the buffer's descriptor to the process at the other end of the socket
        ``conn`` (a ``multiprocessing`` Connection): one byte carrying it (``SCM_RIGHTS``),
        read by ``attach``. Call it right after a message that tells the worker to expect it."""
        if self._fd is None:
            raise SharedBatchError("the shared buffer is closed")
        with socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            socket.send_fds(sock, [b"\0"], [self._fd])

    def take(self, nbytes: int) -> int | None:
        """A free slot for a batch of ``nbytes``; None when none is free or it is too big."""
        with self._lock:
            if nbytes > self.slot_bytes or not self._free or self._fd is None:
                return None
            return self._free.pop()

    def give_back(self, slot: int) -> None:
        """``slot``'s batch was answered (or its worker is gone): it may be written again."""
        with self._lock:
            if slot not in self._free:
                self._free.append(slot)

    def write(self, slot: int, parts: Sequence[np.ndarray]) -> dict[str, Any]:
        """Concatenate ``parts`` (each [k, C, H, W], one dtype) along rows into ``slot``:
        the batch's only copy in this process. Returns the message fields that name it."""
        rows = sum(len(p) for p in parts)
        dtype = parts[0].dtype
        shape = (rows, *parts[0].shape[1:])
        np.concatenate(parts, axis=0, out=self._map.array(slot, dtype, shape))
        return {"slot": slot, "dtype": dtype.str, "shape": list(shape)}

    def close(self) -> None:
        """Drop this process's hold (idempotent). The memory goes when the worker's does
        too; a view still being written keeps the mapping until it is dropped."""
        with self._lock:
            fd, self._fd = self._fd, None
            self._free = []
        if fd is not None:
            os.close(fd)


class AttachedBatches:
    """The worker's side: the buffer received from the server, read in place."""

    def __init__(self, fd: int, slots: int, slot_bytes: int) -> None:
        try:
            self._map = _Mapping(fd, slots, slot_bytes)
        except (OSError, ValueError) as exc:
            raise SharedBatchError(f"cannot map the shared buffer: {exc}") from exc
        finally:
            os.close(fd)

    @classmethod
    def receive(cls, conn: Any, layout: dict[str, Any]) -> AttachedBatches:
        """Take the descriptor ``SharedBatches.send_to`` sent on ``conn`` and map it."""
        with socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            data, fds, _, _ = socket.recv_fds(sock, 1, 1)
        if data != b"\0" or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise SharedBatchError("no shared buffer descriptor arrived")
        return cls(fds[0], int(layout["slots"]), int(layout["slot_bytes"]))

    def batch(self, meta: dict[str, Any]) -> np.ndarray:
        """The batch a "check" message names (its ``slot``, ``dtype``, ``shape``), in place."""
        return self._map.array(int(meta["slot"]), str(meta["dtype"]), list(meta["shape"]))
