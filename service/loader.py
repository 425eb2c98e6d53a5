"""Build the scoring pipeline a config describes: model, input spec, bundle, device.

The model comes from ``service.models`` (eager factory + state dict, TorchScript, TorchServe
``.mar``, ONNX); its input spec is the config's input fields, each unset one filled in from
what the artifact states (``service.models.stated_spec``) — the config wins when it sets a
field. Every model failure is a ``ModelLoadError`` raised before anything listens.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from detectors.bundle import BundleError
from detectors.demo import ARTIFACTS
from detectors.probe.registry import ProbeError
from detectors.sentry import Sentry
from service import models, numerics
from service.config import ServerConfig
from service.engine.pipeline import Pipeline
from service.models import LoadedModel, ModelLoadError
from service.models.common import sample_inputs
from service.spec import SpecError

__all__ = ["ModelLoadError", "build_pipeline", "load_model", "resolve_device"]

log = logging.getLogger(__name__)

# The bundled demo, served when an eager config names no factory.
DEMO_FACTORY = "detectors.demo.model:build_model"
DEMO_WEIGHTS = ARTIFACTS / "model.pt"
DEMO_LABELS = tuple(str(d) for d in range(10))


def resolve_device(name: str) -> torch.device:
    """ "auto" -> cuda when available, else cpu; "cuda[:N]" refused when CUDA is absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def model_source(config: ServerConfig) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(format, loader options except spec/device, InputSpec fields the artifact states).

    "auto" is resolved to the detected format. Eager without a factory is the bundled demo
    (its weights unless ``model_weights`` is set, its digit labels)."""
    if config.model_format == "eager":
        if config.model_factory:
            return (
                "eager",
                {"factory": config.model_factory, "path": config.model_weights or None},
                {},
            )
        weights = config.model_weights or str(DEMO_WEIGHTS)
        return "eager", {"factory": DEMO_FACTORY, "path": weights}, {"labels": DEMO_LABELS}
    path = config.model_path
    name = models.detect_format(path) if config.model_format == "auto" else config.model_format
    if name == "eager" and not config.model_factory:
        raise ModelLoadError(
            f"{path} is a state dict: set model_factory to the 'package.module:callable' "
            "that builds its model"
        )
    options = {"path": path, "factory": config.model_factory or None}
    return name, options, models.stated_spec(name, path)


def load_model(config: ServerConfig, device: torch.device) -> LoadedModel:
    """The configured model in eval mode on ``device``, with the spec it is served with."""
    name, options, stated = model_source(config)
    try:
        spec = config.input_spec(stated)
    except SpecError as exc:
        raise ModelLoadError(f"input spec of {options.get('path')}: {exc}") from None
    loaded = models.load(name, **options, spec=spec, device=device)
    log.info("model %s", loaded.source)
    return loaded


def build_pipeline(config: ServerConfig) -> Pipeline:
    """Model + verified bundle -> Pipeline (not yet warmed up)."""
    device = resolve_device(config.device)  # counts devices; starts neither cuBLAS nor cuDNN
    if device.type == "cuda":  # global torch flags: the CPU path leaves them as they are
        numerics.apply_cuda_numerics(config.cuda_numerics)
    loaded = load_model(config, device)
    if loaded.spec is None:  # loaders return the spec they were given; guard the contract
        raise ModelLoadError(f"{loaded.source}: the loader returned no input spec")
    spec = loaded.spec
    try:
        # H on the CPU whatever the model's device: its heads are a few float64 ai.onnx.ml
        # ops with no CUDA kernels, so a GPU provider would only add copies (and a CUDA
        # torch beside the CPU onnxruntime must still start).
        sentry = Sentry.load(loaded.model, config.bundle, device="cpu")
        # One input at the bottom of the range proves every manifest array fits the model
        # (a mismatch here is a one-line start-up error, not a crash at warm-up).
        x = torch.full((1, *spec.shape), spec.value_range[0], dtype=getattr(torch, spec.dtype))
        sentry.check_fits(x.to(device))
        # Checked against its bundle as loaded; now cast to model_dtype (a warning with the
        # measured difference when the bundle was fitted at another dtype or device).
        numerics.serve_at(sentry, loaded.model, device, config.model_dtype, sample_inputs(spec))
        if config.model_dtype != "float32":
            sentry.check_fits(x.to(device))
    except (BundleError, ProbeError) as exc:
        # One error type for everything that stops a model from being served, so that the
        # command line (which must not import torch to catch them) reports it in one line.
        raise ModelLoadError(str(exc)) from None
    return Pipeline(sentry, spec, device, config.max_batch_size)
