"""Registry of baseline scores: name -> ``Baseline`` subclass."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from detectors.evaluate.baselines.base import Baseline

_BASELINES: dict[str, type[Baseline]] = {}


def register(name: str) -> Callable[[type[Baseline]], type[Baseline]]:
    """Class decorator: register a ``Baseline`` subclass under ``name`` and set its ``name``."""

    def decorate(cls: type[Baseline]) -> type[Baseline]:
        if not (isinstance(cls, type) and issubclass(cls, Baseline)):
            raise TypeError(f"only Baseline subclasses can be registered, got {cls!r}")
        if name in _BASELINES:
            raise ValueError(f"a baseline named {name!r} is already registered")
        cls.name = name
        _BASELINES[name] = cls
        return cls

    return decorate


def available() -> list[str]:
    """Names of the registered baselines, sorted."""
    return sorted(_BASELINES)


def get(name: str) -> type[Baseline]:
    """The ``Baseline`` subclass registered under ``name``."""
    try:
        return _BASELINES[name]
    except KeyError:
        raise KeyError(f"unknown baseline {name!r}; available: {', '.join(available())}") from None


def create(name: str, **params: Any) -> Baseline:
    """A new, unfitted instance of baseline ``name`` with constructor ``params``."""
    return get(name)(**params)
