"""Registry of attack targets: name -> ``AttackTarget`` subclass (one file per entry)."""

from __future__ import annotations

from collections.abc import Callable

from detectors.adaptive.targets.base import AttackTarget

_TARGETS: dict[str, type[AttackTarget]] = {}


def register_target(name: str) -> Callable[[type[AttackTarget]], type[AttackTarget]]:
    """Class decorator: register an ``AttackTarget`` subclass under ``name``."""

    def decorate(cls: type[AttackTarget]) -> type[AttackTarget]:
        if name in _TARGETS:
            raise ValueError(f"an attack target named {name!r} is already registered")
        cls.name = name
        _TARGETS[name] = cls
        return cls

    return decorate


def available_targets() -> list[str]:
    """Registered names, in registration order (gradsentry first)."""
    return list(_TARGETS)


def create_target(name: str) -> AttackTarget:
    """A new, unprepared target; ValueError naming the known ones otherwise."""
    try:
        return _TARGETS[name]()
    except KeyError:
        raise ValueError(f"unknown attack target {name!r}; known: {', '.join(_TARGETS)}") from None
