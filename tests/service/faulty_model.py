"""A model factory for device-fault tests: the demo classifier (same weights, so the demo
bundle fits) whose forward raises the exceptions torch raises on a GPU, from real code in
the model's forward path:

- ``torch.OutOfMemoryError`` for a batch of more than ``MAX_ROWS`` inputs, or when an
  input is filled with ``TOO_BIG`` (one that does not fit even alone);
- ``torch.AcceleratorError`` ("CUDA error: an illegal memory access") when an input is
  filled with ``FAULT`` (a sticky device fault).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from detectors.demo import load_demo_model

MAX_ROWS = 4  # the loader's own check runs 4 sample inputs at once
TOO_BIG, FAULT = 0.25, 0.75


def _filled_with(x: torch.Tensor, value: float) -> bool:
    return bool((x == value).flatten(1).all(1).any())


def build() -> nn.Module:
    model = load_demo_model()

    def device(module: nn.Module, args: Any) -> None:
        x = args[0]
        if _filled_with(x, FAULT):
            raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
        if x.shape[0] > MAX_ROWS or _filled_with(x, TOO_BIG):
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate 2.00 GiB (batch of {x.shape[0]})"
            )

    model.register_forward_pre_hook(device)
    return model
