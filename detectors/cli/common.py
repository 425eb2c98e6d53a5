"""What every subcommand shares: model loading, data loading, errors, challenge specs."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from detectors.challenges import Challenge, parse_spec
from detectors.data import load_images


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def load_model(entry: str, weights: str | Path | None, device: str = "cpu") -> nn.Module:
    """``package.module:factory`` (called with no arguments) + a state dict file loaded
    with ``torch.load(weights_only=True)``; returned in eval mode on ``device``."""
    if ":" not in entry:
        raise CliError(f"--model must look like package.module:factory, got {entry!r}")
    module_name, factory_name = entry.split(":", 1)
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except (ImportError, AttributeError) as exc:
        raise CliError(f"cannot import model factory {entry!r}: {exc}") from None
    model = factory()
    if not isinstance(model, nn.Module):
        raise CliError(f"{entry} returned {type(model).__name__}, not a torch nn.Module")
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise CliError(f"weights file not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for corrupt/unsafe files
            raise CliError(f"cannot read weights {path}: {str(exc).splitlines()[0]}") from None
        if not isinstance(state, dict):
            raise CliError(f"{path} does not hold a state dict")
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise CliError(f"{path} does not fit {entry}: {str(exc).splitlines()[0]}") from None
    return model.to(device).eval()


def load_labelled(path: str | Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 [N, C, H, W], labels int64 [N]) from an npz or image folder."""
    data = load_images(path)
    if data.labels is None:
        raise CliError(f"{what} {path} has no labels (npz 'labels' or class sub-folders needed)")
    return data.images, data.labels


def parse_challenges(specs: list[str]) -> list[Challenge]:
    """Challenge objects from spec strings; ChallengeError names a bad one."""
    return [parse_spec(s) for s in specs]


def check_input_shape(model: nn.Module, images: np.ndarray, what: str) -> None:
    """Run one image through the model so a shape mismatch is caught before long work."""
    try:
        with torch.no_grad():
            out = model(torch.from_numpy(images[:1]).to(next(model.parameters()).device))
    except RuntimeError as exc:
        raise CliError(
            f"{what} of shape {tuple(images.shape[1:])} does not fit the model: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    if out.dim() != 2:
        raise CliError(f"the model must return logits [B, C]; got shape {tuple(out.shape)}")
