"""CPU priority of the serving process below its model worker's (Linux, best effort).

The model worker is the bottleneck of a busy sidecar: when it and the gRPC process both
want a core, every moment the worker waits is a moment no input is scored. Lowering the
gRPC process's priority (a positive nice increment, which needs no privilege) lets the
worker run first; the gRPC process still gets its share (at +10, a tenth of the worker's
weight when both are runnable), and all of the CPU when the worker is idle.

Linux keeps a nice value per thread and a new thread or process starts with its
creator's, so the process's threads are lowered one by one, except the launcher thread
that starts model workers: a worker restarted later keeps the original priority.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection
from pathlib import Path

log = logging.getLogger(__name__)

MAX_NICE = 19


def lower_threads(increment: int, keep: Collection[int] = (), base: int | None = None) -> int:
    """Set every thread of this process, except the native thread ids in ``keep``, to nice
    ``base + increment`` (``base``: this thread's nice now), at most 19. Idempotent for the
    same ``base``. Returns the number of threads changed (0 where unsupported)."""
    if increment <= 0 or not hasattr(os, "setpriority"):
        return 0
    if base is None:
        base = os.getpriority(os.PRIO_PROCESS, 0)
    target = min(MAX_NICE, base + increment)
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # no /proc: not Linux
        return 0
    changed = 0
    for tid in tids:
        if tid in keep:
            continue
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < target:
                os.setpriority(os.PRIO_PROCESS, tid, target)
                changed += 1
        except OSError:  # the thread ended meanwhile
            continue
    log.info("gRPC process threads at nice %d, model worker at %d", target, base)
    return changed


def nice_of(pid: int) -> int:
    """The nice value of process (or thread) ``pid``, read from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[16])
