"""Classifier heads for H, one file per entry, registered in ``registry.CLASSIFIERS``."""

from detectors.detector.classifiers import gbm, logistic, mlp
from detectors.detector.classifiers.registry import (
    CLASSIFIERS,
    ClassifierFactory,
    build_classifier,
    register_classifier,
)

__all__ = [
    "CLASSIFIERS",
    "ClassifierFactory",
    "build_classifier",
    "gbm",
    "logistic",
    "mlp",
    "register_classifier",
]
