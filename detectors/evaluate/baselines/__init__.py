"""Baseline scores to compare gradsentry against (higher = more likely challenging).

Every entry is imported here, explicitly, so ``available()`` lists them all.
"""

from detectors.evaluate.baselines.base import Baseline
from detectors.evaluate.baselines.energy import Energy
from detectors.evaluate.baselines.gradnorm import GradNorm
from detectors.evaluate.baselines.knn import KNN
from detectors.evaluate.baselines.mahalanobis import Mahalanobis
from detectors.evaluate.baselines.msp import MaxSoftmax
from detectors.evaluate.baselines.odin import Odin
from detectors.evaluate.baselines.registry import available, create, get, register
from detectors.evaluate.baselines.vim import ViM

__all__ = [
    "KNN",
    "Baseline",
    "Energy",
    "GradNorm",
    "Mahalanobis",
    "MaxSoftmax",
    "Odin",
    "ViM",
    "available",
    "create",
    "get",
    "register",
]
