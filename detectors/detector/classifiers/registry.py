"""Registry of classifier heads: name -> factory building an unfitted sklearn Pipeline.

A factory takes ``random_state`` and returns ``Pipeline([("scale", StandardScaler()), ...,
(<name>, classifier)])``. The last step must accept ``sample_weight`` in ``fit`` and be
convertible by skl2onnx with a float64 input that reproduces its probabilities to 1e-5.
"""

from __future__ import annotations

from collections.abc import Callable

from sklearn.pipeline import Pipeline

ClassifierFactory = Callable[[int], Pipeline]

CLASSIFIERS: dict[str, ClassifierFactory] = {}


def register_classifier(name: str) -> Callable[[ClassifierFactory], ClassifierFactory]:
    """Decorator adding a factory to ``CLASSIFIERS`` under ``name`` (names are unique)."""

    def decorate(factory: ClassifierFactory) -> ClassifierFactory:
        if name in CLASSIFIERS:
            raise ValueError(f"classifier {name!r} is already registered")
        CLASSIFIERS[name] = factory
        return factory

    return decorate


def build_classifier(name: str, random_state: int) -> Pipeline:
    """A fresh, unfitted Pipeline for the registered classifier ``name``."""
    try:
        factory = CLASSIFIERS[name]
    except KeyError:
        raise ValueError(f"unknown classifier {name!r}; available: {sorted(CLASSIFIERS)}") from None
    return factory(random_state)
