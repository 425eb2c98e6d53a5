"""Detector strategies, one file per entry, registered in ``registry.STRATEGIES``."""

from detectors.detector.strategies import binary, multiclass, per_kind
from detectors.detector.strategies.base import Strategy
from detectors.detector.strategies.registry import STRATEGIES, get_strategy, register_strategy

__all__ = [
    "STRATEGIES",
    "Strategy",
    "binary",
    "get_strategy",
    "multiclass",
    "per_kind",
    "register_strategy",
]
