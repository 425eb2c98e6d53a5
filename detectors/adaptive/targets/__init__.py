"""Detectors the adaptive attack knows: gradsentry's H and the feature-space baselines.

Importing the package registers every entry (each module registers itself explicitly
here, not as a hidden side effect of some other import).
"""

from detectors.adaptive.targets import gradsentry, knn, mahalanobis  # noqa: F401
from detectors.adaptive.targets.base import AttackTarget
from detectors.adaptive.targets.registry import available_targets, create_target

__all__ = ["AttackTarget", "available_targets", "create_target"]
