"""The model-loader contract and registry.

A loader turns one deployed artifact (eager factory + state dict, TorchScript, TorchServe
``.mar``, ONNX) into a ``LoadedModel``: an eager ``nn.Module`` in eval mode (the gradient
probe needs Python forward hooks), its input spec and class labels when known, and a
human-readable description of where it came from. Each format is one module registered with
``@register_loader(name)`` and imported explicitly by the package ``__init__``.

``load(format, **options)`` calls the loader named ``format`` with keyword options only
(each loader documents its own; an option set to None that the format does not take is
ignored, any other unknown option is an error); ``load("auto", path=...)`` picks the format
with ``detect_format``. A format whose artifact states facts about its input (a ``.mar``'s
``input_spec.json`` and ``index_to_name.json``, an ONNX graph's input) registers a
``spec_reader``; ``stated_spec(format, path)`` returns those facts so a caller can fill in
what its own configuration leaves unset before loading. Every failure — unknown format,
wrong option, missing or corrupt file, weights that do not fit — is a ``ModelLoadError``
whose message says what to fix.
"""

from __future__ import annotations

import inspect
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from detectors.models import ModelLoadError
from service.spec import InputSpec

__all__ = [
    "LoadedModel",
    "Loader",
    "ModelLoadError",
    "SpecReader",
    "available_loaders",
    "detect_format",
    "get_loader",
    "load",
    "register_loader",
    "stated_spec",
]

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class LoadedModel:
    """A classifier ready for the gradient probe.

    model: eager ``nn.Module`` in eval mode; takes float ``[B, *spec.shape]`` (already
        normalised by the service when the spec has mean/std) and returns logits ``[B, C]``.
    spec: the input spec from the caller or the artifact, None when neither gives one.
    labels: C class names (from the artifact or the spec), None when unknown.
    source: where the model came from, e.g. ``"mar:/models/mnist.mar (eager, MnistCNN)"``.
    """

    model: nn.Module
    spec: InputSpec | None
    labels: list[str] | None
    source: str


# ``loader(**options) -> LoadedModel``; options are keyword-only and loader specific.
Loader = Callable[..., LoadedModel]
# ``reader(path) -> {field: value}``: the InputSpec fields (shape, dtype, value_range, mean,
# std, labels) an artifact states about itself, typed as InputSpec takes them; only those it
# states. Cheap: reads metadata, never builds the model.
SpecReader = Callable[[Path], dict[str, Any]]
_LOADERS: dict[str, Loader] = {}
_SPEC_READERS: dict[str, SpecReader] = {}
F = TypeVar("F", bound=Loader)


def register_loader(name: str, *, spec_reader: SpecReader | None = None) -> Callable[[F], F]:
    """Decorator: make ``loader`` available as ``load(name, ...)``; ``spec_reader`` (optional)
    answers ``stated_spec(name, path)`` for this format."""
    if not _NAME.match(name):
        raise ValueError(f"loader names are lower-case identifiers, got {name!r}")

    def decorate(loader: F) -> F:
        if name in _LOADERS and _LOADERS[name] is not loader:
            raise ValueError(f"a model loader named {name!r} is already registered")
        _LOADERS[name] = loader
        if spec_reader is not None:
            _SPEC_READERS[name] = spec_reader
        return loader

    return decorate


def stated_spec(format: str, path: str | Path) -> dict[str, Any]:
    """The InputSpec fields the artifact at ``path`` states (``{}`` for formats that state
    none, e.g. a state dict); ``format`` "auto" detects it first. Raises ModelLoadError for an
    unknown format or an unreadable artifact."""
    name = detect_format(path) if format == "auto" else format
    get_loader(name)  # unknown formats fail here with the list of known ones
    reader = _SPEC_READERS.get(name)
    return {} if reader is None else reader(Path(path))


def available_loaders() -> dict[str, Loader]:
    """Registered loaders by name, sorted."""
    return dict(sorted(_LOADERS.items()))


def get_loader(name: str) -> Loader:
    """The loader registered as ``name``."""
    try:
        return _LOADERS[name]
    except KeyError:
        known = ", ".join(sorted(_LOADERS)) or "none"
        raise ModelLoadError(f"unknown model format {name!r} (known: {known}, auto)") from None


def load(format: str, **options: Any) -> LoadedModel:
    """Load a model with the loader named ``format`` ("auto": ``detect_format(path)``)."""
    name = format
    if name == "auto":
        if options.get("path") is None:
            raise ModelLoadError("format 'auto' needs path=... to detect the format from")
        name = detect_format(options["path"])
    loader = get_loader(name)
    signature = inspect.signature(loader)
    # An option set to None means "not set": drop it where this format has no such option.
    options = {k: v for k, v in options.items() if v is not None or k in signature.parameters}
    try:
        signature.bind(**options)
    except TypeError as exc:
        accepted = ", ".join(signature.parameters)
        raise ModelLoadError(f"{name} loader: {exc} (it accepts: {accepted})") from None
    return loader(**options)


def detect_format(path: str | Path) -> str:
    """The loader name for the file at ``path``, from its extension and content.

    ``.onnx`` -> "onnx"; a zip holding ``MAR-INF/MANIFEST.json`` -> "mar"; a zip written by
    ``torch.jit.save`` (has ``code/``) -> "torchscript"; one written by ``torch.save`` (a
    state dict) -> "eager", which also needs a factory.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelLoadError(f"{path} is a directory; give the model file (.mar, .pt, .onnx)")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    kind = torch_file_kind(path)
    if kind is not None:
        return kind
    if suffix == ".mar":
        raise ModelLoadError(
            f"{path} is not a TorchServe model archive: a .mar is a zip with MAR-INF/MANIFEST.json"
        )
    if suffix in (".pt", ".pth"):
        raise ModelLoadError(
            f"{path} is neither a TorchScript module nor a torch state dict "
            "(not a zip written by torch.jit.save / torch.save; truncated or corrupt?)"
        )
    known = ", ".join(available_loaders())
    raise ModelLoadError(
        f"cannot tell the model format of {path} (expected .mar, .pt/.pth or .onnx); "
        f"name the format explicitly ({known})"
    )


def torch_file_kind(path: Path) -> str | None:
    """ "mar", "torchscript" or "eager" (torch.save zip) for a zip at ``path``, else None.

    torch.jit.save writes ``<name>/code/...`` beside ``data.pkl``; torch.save writes only
    ``<name>/data.pkl`` and tensor records. Legacy (pre-1.6, non-zip) torch.save files are
    not recognised: re-save them with a current torch.
    """
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelLoadError(f"{path} is a corrupt zip archive: {exc}") from None
    if "MAR-INF/MANIFEST.json" in names:
        return "mar"
    parts = [name.split("/") for name in names]
    if any(len(p) >= 3 and p[1] == "code" for p in parts):
        return "torchscript"
    if any(len(p) == 2 and p[1] == "data.pkl" for p in parts):
        return "eager"
    raise ModelLoadError(
        f"{path} is a zip archive but neither a TorchServe .mar (no MAR-INF/MANIFEST.json), "
        "a TorchScript module nor a torch state dict"
    )
