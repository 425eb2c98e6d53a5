"""What every subcommand shares: model loading, data loading, errors, challenge specs."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from detectors.bundle import BundleError
from detectors.challenges import Challenge, ChallengeError, parse_spec
from detectors.data import DataError, load_images
from detectors.models import ModelLoadError, load_eager_model
from detectors.precision import model_dtype
from detectors.probe.registry import ProbeError

# ART warns about its own defaults on every attack it builds; they say nothing to a user.
warnings.filterwarnings("ignore", category=UserWarning, module="art")


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


#: Errors that are the user's to fix, in every library subcommand: one line, exit code 2.
USER_ERRORS: tuple[type[Exception], ...] = (
    CliError,
    DataError,
    ChallengeError,
    BundleError,
    ProbeError,
)


def load_model(entry: str, weights: str | Path | None, device: str = "cpu") -> nn.Module:
    """The classifier for ``--model`` / ``--weights`` (see ``detectors.models``)."""
    try:
        return load_eager_model(entry, weights, device)
    except ModelLoadError as exc:
        raise CliError(str(exc)) from None


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
            first = next(model.parameters())
            out = model(torch.from_numpy(images[:1]).to(first.device, model_dtype(model)))
    except RuntimeError as exc:
        raise CliError(
            f"{what} of shape {tuple(images.shape[1:])} does not fit the model: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    if out.dim() != 2:
        raise CliError(f"the model must return logits [B, C]; got shape {tuple(out.shape)}")
