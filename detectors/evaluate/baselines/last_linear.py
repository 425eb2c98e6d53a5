"""Find a classifier's last ``nn.Linear`` and record what it sees in a forward pass.

"Last" is in ``model.modules()`` order, the usual definition for the classification
head (Lee et al. 2018 and Huang et al. 2021 use the penultimate features = the
head's input).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from detectors.evaluate.baselines.base import logits_of


def last_linear(model: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` in ``model.modules()`` order.

    Raises:
        ValueError: the model has no ``nn.Linear``.
    """
    found = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear layer; this baseline reads the "
            "input of the classification head"
        )
    return found[-1]


@dataclass(frozen=True)
class HeadRecord:
    """One forward pass seen through the last Linear layer.

    Attributes:
        logits: float [B, K], the model's output.
        features: float [B, D], the last Linear's input (penultimate features).
        head_output: float [B, K'], the last Linear's output.
    """

    logits: torch.Tensor
    features: torch.Tensor
    head_output: torch.Tensor


def forward_with_head(model: nn.Module, x: torch.Tensor) -> HeadRecord:
    """Run ``model(x)`` and record the last Linear layer's input and output.

    Raises:
        ValueError: the head ran other than exactly once, or its input is not [B, D].
    """
    head = last_linear(model)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(_: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        # Clone: a later in-place op (e.g. ReLU(inplace=True)) would change what we read.
        seen.append((inputs[0].detach().clone(), output.detach().clone()))

    handle = head.register_forward_hook(hook)
    try:
        logits = logits_of(model, x)
    finally:
        handle.remove()
    if len(seen) != 1:
        raise ValueError(
            f"the last nn.Linear ran {len(seen)} times in one forward pass; "
            "expected exactly once (a single classification head)"
        )
    features, head_output = seen[0]
    if features.ndim != 2 or features.shape[0] != x.shape[0]:
        raise ValueError(
            f"the last nn.Linear's input must be [B, D] penultimate features, "
            f"got shape {tuple(features.shape)}"
        )
    return HeadRecord(logits=logits.detach(), features=features, head_output=head_output)
