"""Fixtures for the loader tests: the committed demo model and its reference features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detectors.demo import load_demo_model
from detectors.demo.model import MnistCNN
from detectors.probe import GradientProbe


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # the machine is shared; keep timings honest


@pytest.fixture(scope="session")
def demo() -> MnistCNN:
    """The committed demo classifier, eval mode."""
    return load_demo_model()


@pytest.fixture(scope="session")
def images(digits: tuple[np.ndarray, np.ndarray]) -> torch.Tensor:
    """Eight real digits, float32 [8, 1, 28, 28] in [0, 1]."""
    return torch.from_numpy(digits[0][::225][:8].copy())


@pytest.fixture(scope="session")
def demo_features(demo: MnistCNN, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [8, 10], features [8, 10]) of the eager demo model: the reference."""
    return GradientProbe(demo).features(images)
