"""The Fashion-MNIST demo classifier: a small ResNet for 28×28 grayscale images."""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3×3 conv + BatchNorm layers with an identity (or 1×1 conv) shortcut (He et al. 2016).

    Input float [B, C_in, H, W] -> [B, C_out, H / stride, W / stride].
    """

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class FashionResNet(nn.Module):
    """A 3×3 stem, three stages of BasicBlocks (28², 14², 7²), global average pool, linear.

    Input: float [B, 1, 28, 28] in [0, 1] (normalisation happens inside).
    Output: logits [B, num_classes].
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        num_classes: int = 10,
        widths: tuple[int, ...] = (16, 32, 64),
        blocks_per_stage: int = 1,
    ) -> None:
        super().__init__()
        # Fashion-MNIST's training-set pixel mean and standard deviation
        self.register_buffer("mean", torch.tensor(0.2860))
        self.register_buffer("std", torch.tensor(0.3530))
        self.stem = nn.Sequential(
            nn.Conv2d(1, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        c_in = widths[0]
        for i, width in enumerate(widths):
            for j in range(blocks_per_stage):
                blocks.append(BasicBlock(c_in, width, 2 if i > 0 and j == 0 else 1))
                c_in = width
        self.stages = nn.Sequential(*blocks)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        x = self.stages(self.stem(x))
        return self.fc(x.mean(dim=(2, 3)))


def build_model(num_classes: int = 10) -> FashionResNet:
    """Factory used by loaders: ``detectors.demo.fashion_model:build_model``."""
    return FashionResNet(num_classes)
