"""Registry of detector strategies: name -> Strategy subclass."""

from __future__ import annotations

from collections.abc import Callable

from detectors.detector.strategies.base import Strategy

STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(name: str) -> Callable[[type[Strategy]], type[Strategy]]:
    """Class decorator adding a Strategy to ``STRATEGIES`` under ``name`` (names are unique)."""

    def decorate(cls: type[Strategy]) -> type[Strategy]:
        if name in STRATEGIES:
            raise ValueError(f"strategy {name!r} is already registered")
        cls.name = name
        STRATEGIES[name] = cls
        return cls

    return decorate


def get_strategy(name: str) -> Strategy:
    """An instance of the registered strategy ``name``."""
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; available: {sorted(STRATEGIES)}") from None
