"""Build the scoring pipeline a config describes: model, weights, bundle, device."""

from __future__ import annotations

import importlib

import torch
from torch import nn

from detectors.sentry import Sentry
from service.config import ServerConfig
from service.pipeline import Pipeline


class ModelLoadError(RuntimeError):
    """The configured model cannot be built or its weights cannot be loaded."""


def resolve_device(name: str) -> torch.device:
    """ "auto" -> cuda when available, else cpu; "cuda[:N]" refused when CUDA is absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def load_model(config: ServerConfig, device: torch.device) -> nn.Module:
    """``model_factory()`` with ``model_weights`` (``weights_only=True``), in eval mode."""
    module_name, _, attr = config.model_factory.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(f"model_factory {config.model_factory!r}: {exc}") from exc
    model = factory()
    if not isinstance(model, nn.Module):
        raise ModelLoadError(
            f"model_factory {config.model_factory!r} returned {type(model).__name__}, "
            "not a torch.nn.Module"
        )
    try:
        state = torch.load(config.model_weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"model_weights {config.model_weights!r}: {exc}") from exc
    return model.to(device).eval()


def build_pipeline(config: ServerConfig) -> Pipeline:
    """Model + verified bundle -> Pipeline (not yet warmed up)."""
    device = resolve_device(config.device)
    model = load_model(config, device)
    sentry = Sentry.load(model, config.bundle, device="cuda" if device.type == "cuda" else "cpu")
    return Pipeline(sentry, config.input_spec(), device, config.max_batch_size)
