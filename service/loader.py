"""Build the scoring pipeline a config describes: model, weights, bundle, device."""

from __future__ import annotations

import torch
from torch import nn

from detectors.models import ModelLoadError, load_eager_model
from detectors.sentry import Sentry
from service.config import ServerConfig
from service.pipeline import Pipeline

__all__ = ["ModelLoadError", "build_pipeline", "load_model", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """ "auto" -> cuda when available, else cpu; "cuda[:N]" refused when CUDA is absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def load_model(config: ServerConfig, device: torch.device) -> nn.Module:
    """``model_factory()`` with ``model_weights`` (``weights_only=True``), in eval mode."""
    return load_eager_model(config.model_factory, config.model_weights, device)


def build_pipeline(config: ServerConfig) -> Pipeline:
    """Model + verified bundle -> Pipeline (not yet warmed up)."""
    device = resolve_device(config.device)
    model = load_model(config, device)
    sentry = Sentry.load(model, config.bundle, device="cuda" if device.type == "cuda" else "cpu")
    return Pipeline(sentry, config.input_spec(), device, config.max_batch_size)
