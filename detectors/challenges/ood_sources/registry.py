"""Named synthetic or bundled out-of-distribution sources for the ``ood`` challenge.

A source is a function ``(n, shape, rng) -> images``: ``shape`` is the target
``(C, H, W)``, ``rng`` a seeded numpy Generator, and the result float32
``[n, C, H, W]`` in [0, 1]. One file per source, registered with ``@register_source``
and imported explicitly by this package's ``__init__``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

OodSource = Callable[[int, tuple[int, int, int], np.random.Generator], np.ndarray]

_SOURCES: dict[str, OodSource] = {}


def register_source(name: str) -> Callable[[OodSource], OodSource]:
    """Decorator: make a source function available as ``ood:source=<name>``."""

    def add(fn: OodSource) -> OodSource:
        if name in _SOURCES and _SOURCES[name] is not fn:
            raise ValueError(f"an OOD source named {name!r} is already registered")
        _SOURCES[name] = fn
        return fn

    return add


def sources() -> dict[str, OodSource]:
    """Registered sources by name, sorted."""
    return dict(sorted(_SOURCES.items()))


def cycled_indices(pool: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices into ``pool`` items: a random order, restarted (reshuffled) as needed.

    Each item is used once before any is repeated. Returns int64 ``[n]``.
    """
    rounds = -(-n // pool)
    return np.concatenate([rng.permutation(pool) for _ in range(rounds)])[:n].astype(np.int64)
