"""TorchServe model archives (.mar): the same file TorchServe serves, loaded as TorchServe does.

``MAR-INF/MANIFEST.json`` (JSON, never unpickled) names the ``serializedFile`` and, for eager
archives, the ``modelFile`` holding the model class. Like TorchServe's base handler:

- eager archive (``modelFile`` + a state dict): the archive is extracted to a temporary
  directory (entry paths checked, see ``archive``), ``modelFile`` is imported from there, the
  single ``nn.Module`` subclass it defines (or the one named by ``model_class``) is built
  with no arguments and the state dict loaded into it with ``weights_only=True``. Importing
  ``modelFile`` runs the archive's Python code, exactly as TorchServe does: load only archives
  you would serve.
- TorchScript archive (``serializedFile`` written by ``torch.jit.save``): converted to an
  eager twin as in ``service.models.torchscript``, built by ``factory`` when given, else by the
  archive's ``modelFile`` class; neither is refused with the reason.

``factory`` ("package.module:callable") overrides the archive's ``modelFile`` in both cases.
Class labels are the ``spec``'s when it has labels, else ``index_to_name.json``'s when
present. The input spec is the ``spec`` argument, else the archive's optional
``input_spec.json`` (``{"shape": [1, 28, 28], "dtype": "float32", "value_range": [0, 1],
"mean": [], "std": []}``), else None; ``read_stated_spec`` returns what the archive states so
a caller can fill in only the fields it leaves unset. The archive's handler is not run:
preprocessing it does (resizing, normalisation) must be stated in the spec.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detectors.models import ModelLoadError, weights_problem
from service.models.archive import MarArchive
from service.models.common import build_eager, finish, merge_labels, parse_index_to_name
from service.models.registry import LoadedModel, register_loader, torch_file_kind
from service.models.torchscript import (
    DEFAULT_TOLERANCE,
    NEEDS_FACTORY,
    copy_into_eager,
    jit_load,
)
from service.spec import InputSpec, SpecError

LABELS_FILE = "index_to_name.json"
SPEC_FILE = "input_spec.json"
_SPEC_KEYS = ("shape", "dtype", "value_range", "mean", "std")
_imports = itertools.count()


def read_stated_spec(path: Path) -> dict[str, Any]:
    """The InputSpec fields the archive states: ``input_spec.json``'s keys and ``labels``
    from ``index_to_name.json``, each only when present (the registry's ``spec_reader``)."""
    with MarArchive(path) as archive:
        archive.manifest()  # a broken manifest is reported before anything else
        fields: dict[str, Any] = {}
        if archive.has(SPEC_FILE):
            where = f"{path.name}:{SPEC_FILE}"
            fields.update(spec_fields_from_json(archive.read(SPEC_FILE), where))
        if archive.has(LABELS_FILE):
            where = f"{path.name}:{LABELS_FILE}"
            fields["labels"] = tuple(parse_index_to_name(archive.read(LABELS_FILE), where))
    return fields


@register_loader("mar", spec_reader=read_stated_spec)
def load_mar(
    *,
    path: str | Path,
    factory: str | None = None,
    model_class: str | None = None,
    spec: InputSpec | None = None,
    device: str | torch.device = "cpu",
    tolerance: float = DEFAULT_TOLERANCE,
) -> LoadedModel:
    """The model in the .mar at ``path`` as an eager module (see module doc)."""
    path = Path(path)
    with MarArchive(path) as archive:
        entry = archive.manifest()
        labels = (
            parse_index_to_name(archive.read(LABELS_FILE), f"{path.name}:{LABELS_FILE}")
            if archive.has(LABELS_FILE)
            else None
        )
        if spec is None and archive.has(SPEC_FILE):
            spec = spec_from_json(archive.read(SPEC_FILE), f"{path.name}:{SPEC_FILE}")
        spec, labels = merge_labels(spec, labels, f"{path.name}:{LABELS_FILE}")
        with tempfile.TemporaryDirectory(prefix="gradsentry-mar-") as tmp:
            root = Path(tmp)
            archive.extract(root)
            weights = root / entry.serialized_file
            kind = _serialized_kind(weights, path, entry.serialized_file)
            build, built_by = _builder(factory, model_class, entry.model_file, root, path)
            what = f"{path.name} ({entry.serialized_file})"
            if kind == "torchscript":
                if build is None:
                    raise ModelLoadError(
                        f"{what} holds a TorchScript module and the manifest names no "
                        f"modelFile; {NEEDS_FACTORY}"
                    )
                model = copy_into_eager(jit_load(weights), build(), spec, tolerance, what)
            else:
                if build is None:
                    raise ModelLoadError(
                        f"{what} holds a state dict but the manifest names no modelFile to "
                        "build the model from; add --model-file to the archive or pass "
                        "factory='package.module:callable'"
                    )
                model = build()
                _load_state(model, weights, what)
    version = f" {entry.version}" if entry.version else ""
    source = f"mar:{path} ({entry.name}{version}, {kind}, {built_by})"
    return finish(model, spec, labels, source, device, f"model in {path.name}")


def spec_from_json(data: bytes, where: str) -> InputSpec:
    """An InputSpec from JSON with keys among shape, dtype, value_range, mean, std."""
    try:
        return InputSpec(**spec_fields_from_json(data, where))
    except (SpecError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{where}: {exc}") from None


def spec_fields_from_json(data: bytes, where: str) -> dict[str, Any]:
    """The InputSpec fields in JSON with keys among shape, dtype, value_range, mean, std, typed
    as InputSpec takes them (tuples of int / float); values are checked by InputSpec."""
    try:
        raw: Any = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{where} must be a JSON object")
    unknown = sorted(set(raw) - set(_SPEC_KEYS))
    if unknown:
        raise ModelLoadError(f"{where}: unknown key(s) {unknown} (known: {list(_SPEC_KEYS)})")
    fields: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "dtype":
            fields[key] = value
            continue
        number = int if key == "shape" else float
        if not isinstance(value, list) or not all(
            isinstance(v, number | int) and not isinstance(v, bool) for v in value
        ):
            raise ModelLoadError(f"{where}: {key} must be a list of numbers, got {value!r}")
        fields[key] = tuple(number(v) for v in value)
    return fields


def _serialized_kind(weights: Path, archive: Path, name: str) -> str:
    try:
        kind = torch_file_kind(weights)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{archive.name}: serializedFile {name!r}: {exc}") from None
    if kind not in ("torchscript", "eager"):
        raise ModelLoadError(
            f"{archive.name}: serializedFile {name!r} is neither a TorchScript module nor a "
            "torch state dict (written by torch.jit.save or torch.save)"
        )
    return kind


def _builder(
    factory: str | None,
    model_class: str | None,
    model_file: str | None,
    root: Path,
    archive: Path,
) -> tuple[Callable[[], nn.Module] | None, str]:
    """A no-argument callable building the eager model, and how it was found."""
    if factory is not None:
        return (lambda: build_eager(factory)), f"factory {factory}"
    if model_file is None:
        return None, "no model class"
    cls = import_model_class(root / model_file, model_class, archive)

    def build() -> nn.Module:
        try:
            return cls()
        except Exception as exc:  # user code: report, do not crash the server
            raise ModelLoadError(
                f"{archive.name}: cannot build {cls.__name__}() with no arguments (as "
                f"TorchServe does): {exc}"
            ) from None

    return build, f"class {cls.__name__} from {model_file}"


def import_model_class(file: Path, model_class: str | None, archive: Path) -> type[nn.Module]:
    """Import ``file`` (extracted from ``archive``) under a private module name and return
    the single ``nn.Module`` subclass it defines, or the one called ``model_class``.

    The extraction directory is on ``sys.path`` while the file runs, so it may import sibling
    files of the archive; those helper modules are forgotten afterwards so that another
    archive's files of the same name are not shadowed.
    """
    if file.suffix != ".py":
        raise ModelLoadError(f"{archive.name}: modelFile {file.name!r} is not a .py file")
    stem = re.sub(r"\W", "_", file.stem)
    digest = hashlib.sha256(str(archive.resolve()).encode()).hexdigest()[:12]
    module_name = f"_gradsentry_mar_{digest}_{next(_imports)}_{stem}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"{archive.name}: cannot import modelFile {file.name!r}")
    module = importlib.util.module_from_spec(spec)
    root = str(file.parent)
    inside = os.path.join(root, "")
    before = set(sys.modules)
    sys.modules[module_name] = module
    sys.path.insert(0, root)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the archive's code failed; say so instead of crashing
        del sys.modules[module_name]
        raise ModelLoadError(
            f"{archive.name}: modelFile {file.name!r} fails to import: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        sys.path.remove(root)
        for name in set(sys.modules) - before - {module_name}:
            origin = getattr(sys.modules[name], "__file__", None) or ""
            if origin.startswith(inside):
                del sys.modules[name]
    defined = {
        obj.__name__: obj
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__module__ == module_name
    }
    if model_class is not None:
        if model_class not in defined:
            raise ModelLoadError(
                f"{archive.name}: modelFile {file.name!r} defines no nn.Module subclass "
                f"{model_class!r} (it defines {sorted(defined)})"
            )
        return defined[model_class]
    if len(defined) != 1:
        raise ModelLoadError(
            f"{archive.name}: modelFile {file.name!r} must define exactly one nn.Module "
            f"subclass, found {sorted(defined) or 'none'}; pass model_class='Name'"
        )
    return next(iter(defined.values()))


def _load_state(model: nn.Module, weights: Path, what: str) -> None:
    """Load the state dict at ``weights`` (``weights_only=True``) strictly into ``model``."""
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file or a pickle needing unsafe globals
        problem = weights_problem(exc)
        raise ModelLoadError(f"{what}: cannot read the state dict: {problem}") from None
    if not isinstance(state, dict):
        raise ModelLoadError(f"{what} does not hold a state dict ({type(state).__name__})")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:3])
        raise ModelLoadError(
            f"{what} does not fit {type(model).__name__}: {first} {detail}"
        ) from None
