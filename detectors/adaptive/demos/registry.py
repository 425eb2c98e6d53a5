"""Registry of demos the attack report runs on: name -> loader of an ``AttackSetup``.

One file per demo; a loader takes the data path the user gave (None: the demo's default)
and returns the committed classifier, its bundle and the demo's fixed splits.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from detectors.adaptive.setup import AttackSetup

DemoLoader = Callable[[Path | None], AttackSetup]
_DEMOS: dict[str, DemoLoader] = {}


def register_demo(name: str) -> Callable[[DemoLoader], DemoLoader]:
    """Decorator: register a demo loader under ``name``."""

    def decorate(fn: DemoLoader) -> DemoLoader:
        if name in _DEMOS:
            raise ValueError(f"a demo named {name!r} is already registered")
        _DEMOS[name] = fn
        return fn

    return decorate


def available_demos() -> list[str]:
    return list(_DEMOS)


def load_demo(name: str, data: Path | None = None) -> AttackSetup:
    """The demo's ``AttackSetup``; ValueError naming the known demos otherwise."""
    if name not in _DEMOS:
        raise ValueError(f"unknown demo {name!r}; known: {', '.join(_DEMOS)}")
    return _DEMOS[name](data)
