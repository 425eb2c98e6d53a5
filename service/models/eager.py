"""Eager models: ``package.module:factory`` plus a state dict loaded with weights_only=True."""

from __future__ import annotations

from pathlib import Path

import torch

from service.models.common import build_eager, finish, merge_labels
from service.models.registry import LoadedModel, register_loader
from service.spec import InputSpec


@register_loader("eager")
def load_eager(
    *,
    factory: str,
    path: str | Path | None = None,
    spec: InputSpec | None = None,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """``factory()`` (an importable ``package.module:callable`` returning an ``nn.Module``)
    with the state dict at ``path`` loaded strictly; ``path=None`` keeps the factory's own
    weights. Labels come from ``spec``. With a spec, one sample batch is run to check the
    model returns logits ``[B, len(labels)]``."""
    model = build_eager(factory, path)
    spec, labels = merge_labels(spec, None, "the spec")
    where = f"eager:{factory}" + (f" + {path}" if path is not None else "")
    return finish(model, spec, labels, where, device, f"model {factory}")
