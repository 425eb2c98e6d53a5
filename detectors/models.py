"""Build an eager classifier from ``package.module:factory`` and a state-dict file."""

from __future__ import annotations

import importlib
import pickle
import re
from pathlib import Path

import torch
from torch import nn

from detectors.errors import ModelLoadError

__all__ = ["LogitsOf", "ModelLoadError", "load_eager_model"]


def load_eager_model(
    entry: str, weights: str | Path | None, device: str | torch.device = "cpu"
) -> nn.Module:
    """``entry`` = ``package.module:factory`` (called with no arguments); ``weights`` a
    state dict loaded with ``torch.load(weights_only=True)`` (never unpickled code).
    Returns the model in eval mode on ``device``."""
    module_name, sep, factory_name = entry.partition(":")
    if not sep or not module_name or not factory_name:
        raise ModelLoadError(f"model factory must look like package.module:factory, got {entry!r}")
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(f"cannot import model factory {entry!r}: {exc}") from None
    model = factory()
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{entry} returned {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise ModelLoadError(f"weights file not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for corrupt or unsafe files
            raise ModelLoadError(f"cannot read weights {path}: {weights_problem(exc)}") from None
        if not isinstance(state, dict):
            raise ModelLoadError(f"{path} does not hold a state dict")
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelLoadError(f"{path} does not fit {entry}: {_first_line(exc)}") from None
    return model.to(device).eval()


_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def weights_problem(exc: BaseException) -> str:
    """What ``torch.load(weights_only=True)`` found wrong with a file, in our words: torch's
    own message advises loading with ``weights_only=False``, which must never be done with
    a file a user hands us."""
    text = str(exc)
    unsafe = _UNSAFE_GLOBAL.search(text)
    if unsafe:
        return (
            f"it holds a pickled Python object ({unsafe.group(1)}), not only tensors; "
            "save model.state_dict() instead (pickled code is never loaded)"
        )
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in text:
        return "not a readable torch state dict file (torch.save(model.state_dict(), path))"
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class LogitsOf(nn.Module):
    """A Hugging Face image classifier (``model(pixel_values=x).logits``) as a plain
    ``x [B, 3, H, W] -> logits [B, C]`` module, the form the probe and the loaders take."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits
