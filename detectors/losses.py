"""Confounding losses: per-sample J(z) whose gradient probes the network.

Each loss maps logits [B, C] to per-sample losses [B]. Samples never interact, so the
gradient of Σ_i J_i with respect to any layer output is, row by row, each sample's own.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

LossFn = Callable[[Tensor], Tensor]

_LOSSES: dict[str, LossFn] = {}


def register_loss(name: str) -> Callable[[LossFn], LossFn]:
    """Decorator: register a confounding loss under ``name``."""

    def decorate(fn: LossFn) -> LossFn:
        if name in _LOSSES:
            raise ValueError(f"loss {name!r} is already registered")
        _LOSSES[name] = fn
        return fn

    return decorate


def get_loss(name: str) -> LossFn:
    """The loss registered as ``name``; ValueError naming the known ones otherwise."""
    try:
        return _LOSSES[name]
    except KeyError:
        raise ValueError(
            f"unknown confounding loss {name!r}; known: {', '.join(sorted(_LOSSES))}"
        ) from None


def available_losses() -> tuple[str, ...]:
    """Names of the registered losses."""
    return tuple(_LOSSES)


@register_loss("all_ones")
def all_ones(logits: Tensor) -> Tensor:
    """J = Σ_c BCE(softmax(z)_c, 1) = −Σ_c log softmax(z)_c; ∂J/∂z = C·softmax(z) − 1."""
    return -F.log_softmax(logits, dim=1).sum(dim=1)


@register_loss("predicted")
def predicted(logits: Tensor) -> Tensor:
    """Cross-entropy to the model's own prediction; ∂J/∂z = softmax(z) − onehot(argmax z)."""
    return F.cross_entropy(logits, logits.argmax(dim=1).detach(), reduction="none")


@register_loss("runner_up")
def runner_up(logits: Tensor) -> Tensor:
    """Cross-entropy to the second most likely class: the update that would flip the decision."""
    second = logits.topk(2, dim=1).indices[:, 1].detach()
    return F.cross_entropy(logits, second, reduction="none")
