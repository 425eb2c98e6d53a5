"""Demo data sets for ``gradsentry demo --dataset NAME``: a registry, one module per entry."""

from detectors.demo.datasets.fashion import FASHION
from detectors.demo.datasets.mnist import MNIST
from detectors.demo.datasets.registry import DemoDataset, datasets, register

__all__ = ["FASHION", "MNIST", "DemoDataset", "datasets", "register"]
