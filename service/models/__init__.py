"""Model loaders: the deployed classifier (eager, TorchScript, TorchServe .mar, ONNX) as an
eager ``nn.Module`` for the gradient probe, with its input spec and labels.

``load(format, **options)`` / ``load("auto", path=...)``; each format is one module
registered with ``@register_loader`` and imported explicitly below — a new loader is one
module plus one line here.
"""

from service.models import eager, mar, onnx, torchscript
from service.models.registry import (
    LoadedModel,
    Loader,
    ModelLoadError,
    SpecReader,
    available_loaders,
    detect_format,
    get_loader,
    load,
    register_loader,
    stated_spec,
)

__all__ = [
    "LoadedModel",
    "Loader",
    "ModelLoadError",
    "SpecReader",
    "available_loaders",
    "detect_format",
    "eager",
    "get_loader",
    "load",
    "mar",
    "onnx",
    "register_loader",
    "stated_spec",
    "torchscript",
]
