"""The demo classifier: a small CNN for 28×28 grayscale digits."""

from __future__ import annotations

import torch
from torch import nn


class MnistCNN(nn.Module):
    """Two conv blocks with BatchNorm and in-place ReLU, then a two-layer head.

    Input: float [B, 1, 28, 28] in [0, 1] (normalisation happens inside).
    Output: logits [B, 10].
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(0.1307))
        self.register_buffer("std", torch.tensor(0.3081))
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.fc1 = nn.Linear(32 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        x = self.features(x).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


def build_model(num_classes: int = 10) -> MnistCNN:
    """Factory used by loaders: ``detectors.demo.model:build_model``."""
    return MnistCNN(num_classes)
