"""Run library code that draws from the global numpy and torch generators, reproducibly."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

MAX_SEED = 2**32 - 1  # np.random.seed accepts 0 .. 2**32 - 1


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed numpy's and torch's global generators, and restore their states afterwards.

    ART attacks and imagecorruptions draw from the global generators and take no
    generator argument; restoring keeps the caller's own random streams undisturbed.
    """
    state = np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            np.random.set_state(state)


def derived_seed(seed: int, index: int) -> int:
    """A well-mixed 32-bit seed for item ``index`` of a run seeded with ``seed``.

    Seeding each item on its own makes its output independent of batching and order.
    """
    return int(np.random.SeedSequence((seed, index)).generate_state(1)[0])
