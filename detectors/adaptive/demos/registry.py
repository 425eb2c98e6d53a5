"""Registry of demos the attack report runs on: name -> loader of an ``AttackSetup``.

One file per demo; a loader takes the data path the user gave (None: the demo's default)
and returns the committed classifier, its bundle and the demo's fixed splits. Demo data
sets registered for ``gradsentry demo`` (``detectors.demo.datasets``, where present) are
known here by the same name without a file of their own: ``from_dataset`` reads their
committed model, their bundle and their classifier / detector / test splits.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from detectors.adaptive.setup import AttackSetup, Labelled

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


def _datasets() -> dict[str, Any]:
    """The ``gradsentry demo`` data sets by name ({} where that registry does not exist)."""
    try:
        module = importlib.import_module("detectors.demo.datasets")
    except ModuleNotFoundError:
        return {}
    return dict(module.datasets())


def from_dataset(entry: Any, data: Path | None) -> AttackSetup:
    """The ``AttackSetup`` of a demo data set entry: its committed model in eval mode, the
    bundle in its artifacts, the test split attacked, the baselines fitted on the
    classifier split and calibrated on the detector split (as in the MNIST demo)."""
    splits = entry.load_splits(Path(data or entry.default_data))
    return AttackSetup(
        name=entry.name,
        model=entry.load_model(),
        bundle=Path(entry.artifacts) / "bundle",
        test=Labelled(splits["test"].images, splits["test"].labels),
        baseline_fit=Labelled(splits["classifier"].images, splits["classifier"].labels),
        calibration=Labelled(splits["detector"].images, splits["detector"].labels),
        description=f"{entry.title}: the test split (first n attacked)",
    )


def available_demos() -> list[str]:
    """Registered demos, then demo data sets not registered here."""
    return [*_DEMOS, *(n for n in _datasets() if n not in _DEMOS)]


def load_demo(name: str, data: Path | None = None) -> AttackSetup:
    """The demo's ``AttackSetup``; ValueError naming the known demos otherwise."""
    if name in _DEMOS:
        return _DEMOS[name](data)
    datasets = _datasets()
    if name in datasets:
        return from_dataset(datasets[name], data)
    raise ValueError(f"unknown demo {name!r}; known: {', '.join(available_demos())}")
