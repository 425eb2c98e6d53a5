"""Fixtures for the challenge tests: digits the demo model classifies correctly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

N_IMAGES = 8


@pytest.fixture(scope="session")
def correct_digits(
    digits: tuple[np.ndarray, np.ndarray], digits_model: nn.Module
) -> tuple[np.ndarray, np.ndarray]:
    """The first N_IMAGES digits the model gets right: (float32 [8, 1, 28, 28], int64 [8])."""
    images, labels = digits
    with torch.no_grad():
        predicted = digits_model(torch.from_numpy(images[:200])).argmax(1).numpy()
    keep = np.flatnonzero(predicted == labels[:200])[:N_IMAGES]
    assert len(keep) == N_IMAGES
    return images[keep], labels[keep]
