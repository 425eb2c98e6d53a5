"""The detector bundle: a fitted H as ONNX heads plus a JSON manifest (no pickle anywhere).

Layout::

    <bundle>/manifest.json     what the detector is, what it was fitted for, how it scored
    <bundle>/<head>.onnx       one ONNX graph per head, sha256 recorded in the manifest

A bundle is tied to one model (``model_fingerprint``) and one ordered feature schema;
``load_bundle`` refuses it for any other.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import itertools
import json
import math
import os
import platform
import re
import shutil
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime
import torch

from detectors.detector import (
    STRATEGIES,
    InvalidOnnxHeadError,
    LogTransform,
    OnnxDetector,
    attribution,
    get_strategy,
)
from detectors.detector.kinds import check_kind_list
from detectors.detector.runtime import Device

if TYPE_CHECKING:
    from detectors.detector.estimator import ReliabilityDetector

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
REQUIRED_FIELDS = (
    "format_version",
    "created",
    "feature_schema",
    "feature_spec",
    "loss",
    "transform",
    "model_fingerprint",
    "strategy",
    "classifier",
    "kinds",
    "threshold",
    "target_fpr",
    "calibration_fpr",
    "heads",
    "fit_summary",
    "metrics",
    "versions",
)
_FINGERPRINT = re.compile(r"^sha256:[0-9a-f]{64}$")
_HEAD_FILE = re.compile(r"^[A-Za-z0-9_]+\.onnx$")


class BundleError(ValueError):
    """A bundle cannot be saved or loaded; the message names the problem."""


class BundleNotFoundError(BundleError):
    """The bundle directory or its manifest does not exist."""


class BundleFormatError(BundleError):
    """The manifest is not valid JSON, lacks a field or has a malformed value."""


class BundleVersionError(BundleFormatError):
    """The manifest's format_version is not one this gradsentry reads."""


class BundleCorruptError(BundleError):
    """A head file is missing, does not match its recorded sha256 or is not valid ONNX."""


class BundleMismatchError(BundleError):
    """The bundle was fitted for another model or another feature schema."""


class BundleExistsError(BundleError):
    """save_bundle would replace something it must not."""


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: where it is, its manifest, and the ready-to-score detector."""

    path: Path
    manifest: dict[str, Any]
    detector: OnnxDetector

    def check_schema(self, feature_schema: Sequence[Mapping[str, Any]]) -> None:
        """Refuse (BundleMismatchError, naming the first difference) features other than
        the ones H was fitted on."""
        _compare_schemas(
            self.manifest["feature_schema"], _check_schema(feature_schema, "feature_schema")
        )


def model_fingerprint(model: torch.nn.Module) -> str:
    """ "sha256:<hex>" over every named parameter, then every persistent buffer (those in the
    state dict), in module order. Non-persistent buffers are derived values, not state (an
    ONNX twin's graph constants, a transformer's position ids).

    Each tensor contributes its name, dtype, shape and the raw bytes of its contiguous CPU
    copy, each length-prefixed so that no two different models hash the same stream. BatchNorm
    running statistics are buffers, so re-estimating them changes the fingerprint too.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    digest = hashlib.sha256()
    state = model.state_dict(keep_vars=True)
    buffers = ((n, b) for n, b in model.named_buffers() if n in state)
    for name, tensor in itertools.chain(model.named_parameters(), buffers):
        if tensor.is_meta:
            raise ValueError(f"tensor {name!r} is on the meta device and holds no values")
        t = tensor.detach().cpu().resolve_conj().resolve_neg().contiguous()
        header = json.dumps([name, str(t.dtype), list(t.shape)]).encode()
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        for chunk in (header, data):
            digest.update(len(chunk).to_bytes(8, "little"))
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def save_bundle(
    path: str | os.PathLike[str],
    detector: ReliabilityDetector,
    *,
    feature_schema: Sequence[Mapping[str, Any]],
    feature_spec: Mapping[str, Any],
    model_fingerprint: str,
    loss: str,
    fit_summary: Mapping[str, Any],
    metrics: Mapping[str, Any],
    overwrite: bool = False,
    fitted_on: Mapping[str, str] | None = None,
) -> Path:
    """Write ``detector`` as a bundle directory at ``path`` and return that path.

    Args:
        feature_schema: one JSON object per feature column, in order, each with a "name".
        feature_spec: JSON object describing how the features are computed (opaque here).
        model_fingerprint: ``model_fingerprint(model)`` of the model the features came from.
        loss: name of the confounding loss.
        fit_summary, metrics: JSON objects (numpy scalars/arrays are converted; NaN refused).
        overwrite: replace an existing bundle at ``path``; the old one stays in place until
            the new one is complete.
        fitted_on: where the features were computed, ``{"device": "cpu", "cuda", …,
            "dtype": "float32" | "float16" | "bfloat16"}`` (``detectors.precision.fitted_on``);
            a bundle without it was fitted in float32 on the CPU.

    The bundle is written into a temporary sibling directory and renamed into place.
    """
    # Saving is the lab's side (scikit-learn, skl2onnx); loading never imports them.
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    from detectors.detector.export import to_onnx

    path = Path(path)
    try:
        check_is_fitted(detector, "heads_")
    except (NotFittedError, TypeError) as exc:
        raise BundleError(f"cannot save: {exc}") from exc
    schema = _check_schema(feature_schema, "feature_schema")
    if len(schema) != detector.n_features_in_:
        raise BundleError(
            f"feature_schema has {len(schema)} entries but the detector was "
            f"fitted on {detector.n_features_in_} features"
        )
    if not isinstance(model_fingerprint, str) or not _FINGERPRINT.match(model_fingerprint):
        raise BundleError(
            f"model_fingerprint must look like 'sha256:<64 hex>', got {model_fingerprint!r}"
        )
    if not isinstance(loss, str) or not loss:
        raise BundleError(f"loss must be a non-empty string, got {loss!r}")
    _check_destination(path, overwrite)

    heads = to_onnx(detector)
    manifest = {
        "format_version": FORMAT_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "feature_schema": schema,
        "feature_spec": _json_object(feature_spec, "feature_spec"),
        "loss": loss,
        "transform": detector.transform_.to_dict(),
        "model_fingerprint": model_fingerprint,
        "strategy": detector.strategy,
        "classifier": detector.classifier,
        "kinds": list(detector.kinds_),
        "threshold": float(detector.threshold_),
        "target_fpr": float(detector.target_fpr),
        "calibration_fpr": float(detector.calibration_fpr_),
        "heads": {
            name: {"file": f"{name}.onnx", "sha256": hashlib.sha256(data).hexdigest()}
            for name, data in heads.items()
        },
        "fit_summary": _json_object(fit_summary, "fit_summary"),
        "metrics": _json_object(metrics, "metrics"),
        "versions": _versions(),
    }
    if fitted_on is not None:
        manifest["fitted_on"] = _check_fitted_on(dict(fitted_on), BundleError)
    if attribution.HEAD in heads:
        # Optional (bundles without it score kinds from the strategy's heads).
        manifest["attribution"] = {
            "head": attribution.HEAD,
            "temperature": float(detector.attribution_temperature_),
            "heldout_accuracy": float(detector.attribution_accuracy_),
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; a server running as another user reads it
        for name, data in heads.items():
            _write(tmp / manifest["heads"][name]["file"], data)
        # The manifest goes last: a directory with a manifest has all its heads.
        _write(tmp / MANIFEST, (json.dumps(manifest, indent=2, allow_nan=False) + "\n").encode())
        _move_into_place(tmp, path, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_bundle(
    path: str | os.PathLike[str],
    *,
    model_fingerprint: str | None = None,
    feature_schema: Sequence[Mapping[str, Any]] | None = None,
    device: Device = "cpu",
) -> Bundle:
    """Read and verify a bundle; optionally refuse it for another model or feature schema.

    Raises:
        BundleNotFoundError, BundleFormatError, BundleVersionError, BundleCorruptError,
        BundleMismatchError (all ``BundleError``, a ``ValueError``).
    """
    path = Path(path)
    if not path.is_dir():
        raise BundleNotFoundError(f"no bundle directory at {path}")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleNotFoundError(f"{path} has no {MANIFEST}")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleFormatError(f"{MANIFEST} is not valid JSON: {exc}") from exc
    transform = _check_manifest(manifest)

    if model_fingerprint is not None and model_fingerprint != manifest["model_fingerprint"]:
        raise BundleMismatchError(
            f"bundle was fitted for model {_short(manifest['model_fingerprint'])}, this model is "
            f"{_short(model_fingerprint)}"
        )
    if feature_schema is not None:
        _compare_schemas(
            manifest["feature_schema"], _check_schema(feature_schema, "feature_schema")
        )

    heads = {name: _read_head(path, name, entry) for name, entry in manifest["heads"].items()}
    try:
        detector = OnnxDetector(
            heads,
            transform,
            manifest["strategy"],
            manifest["kinds"],
            manifest["threshold"],
            device=device,
            attribution_temperature=manifest.get("attribution", {}).get("temperature", 1.0),
        )
    except InvalidOnnxHeadError as exc:
        raise BundleCorruptError(f"{path.name}: {exc}") from exc
    except (TypeError, ValueError) as exc:  # manifest parts that do not fit the heads
        raise BundleFormatError(f"{path.name}: {exc}") from exc
    if detector.n_features_in_ != len(manifest["feature_schema"]):
        raise BundleFormatError(
            f"feature_schema lists {len(manifest['feature_schema'])} "
            f"features but the heads take {detector.n_features_in_}"
        )
    return Bundle(path=path, manifest=manifest, detector=detector)


# --- manifest validation ------------------------------------------------------------------


def _check_manifest(manifest: object) -> LogTransform:
    """Validate every field load_bundle relies on; return the parsed transform."""
    if not isinstance(manifest, dict):
        raise BundleFormatError(f"{MANIFEST} must hold a JSON object")
    if "format_version" not in manifest:
        raise BundleFormatError(f"{MANIFEST} is missing field 'format_version'")
    version = manifest["format_version"]
    if type(version) is not int or version != FORMAT_VERSION:
        raise BundleVersionError(
            f"unsupported bundle format_version {version!r} (this "
            f"gradsentry reads {FORMAT_VERSION})"
        )
    missing = [f for f in REQUIRED_FIELDS if f not in manifest]
    if missing:
        raise BundleFormatError(f"{MANIFEST} is missing field(s) {missing}")

    def bad(field: str, what: str) -> BundleFormatError:
        return BundleFormatError(
            f"manifest field {field!r} must be {what}, got {manifest[field]!r}"[:300]
        )

    _check_schema(manifest["feature_schema"], "manifest field 'feature_schema'", BundleFormatError)
    for field in ("feature_spec", "fit_summary", "metrics", "versions", "heads"):
        if not isinstance(manifest[field], dict):
            raise bad(field, "a JSON object")
    for field in ("loss", "classifier", "created"):
        if not isinstance(manifest[field], str) or not manifest[field]:
            raise bad(field, "a non-empty string")
    if not isinstance(manifest["model_fingerprint"], str) or not _FINGERPRINT.match(
        manifest["model_fingerprint"]
    ):
        raise bad("model_fingerprint", "'sha256:<64 hex>'")
    # A threshold of 0 flags every input and 1 none (scores are probabilities): neither is
    # a calibrated detector, so both are refused.
    for field, low_open in (("threshold", True), ("calibration_fpr", False), ("target_fpr", True)):
        value = manifest[field]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not (math.isfinite(value) and (0 < value < 1 if low_open else 0 <= value <= 1))
        ):
            raise bad(field, "a number in (0, 1)" if low_open else "a number in [0, 1]")
    if manifest["strategy"] not in STRATEGIES:
        raise bad("strategy", f"one of {sorted(STRATEGIES)}")
    if not isinstance(manifest["kinds"], list):
        raise bad("kinds", "a list of challenge kinds")
    try:
        kinds = check_kind_list(manifest["kinds"])
        transform = LogTransform.from_dict(manifest["transform"])
    except (TypeError, ValueError) as exc:
        raise BundleFormatError(f"manifest is malformed: {exc}") from exc
    expected = get_strategy(manifest["strategy"]).head_names(kinds)
    if "attribution" in manifest:
        entry = manifest["attribution"]
        temperature = entry.get("temperature") if isinstance(entry, dict) else None
        if (
            not isinstance(entry, dict)
            or entry.get("head") != attribution.HEAD
            or isinstance(temperature, bool)
            or not isinstance(temperature, int | float)
            or not (math.isfinite(temperature) and temperature > 0)
        ):
            raise bad("attribution", f"{{'head': {attribution.HEAD!r}, 'temperature': > 0, ...}}")
        expected = [*expected, attribution.HEAD]
    if "fitted_on" in manifest:
        _check_fitted_on(manifest["fitted_on"], BundleFormatError)
    if sorted(manifest["heads"]) != sorted(expected):
        raise BundleFormatError(
            f"manifest heads {sorted(manifest['heads'])} do not match "
            f"strategy {manifest['strategy']!r} with kinds {list(kinds)} "
            f"(expected {expected})"
        )
    for name, entry in manifest["heads"].items():
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("file"), str)
            or not _HEAD_FILE.match(entry["file"])
            or not isinstance(entry.get("sha256"), str)
        ):
            raise BundleFormatError(
                f"manifest entry for head {name!r} must be "
                f"{{'file': '<name>.onnx', 'sha256': '<hex>'}}, got {entry!r}"
            )
    return transform


def _read_head(path: Path, name: str, entry: Mapping[str, str]) -> bytes:
    """The head's bytes, verified against the manifest's sha256."""
    file = path / entry["file"]
    if not file.is_file():
        raise BundleCorruptError(f"head file {entry['file']!r} listed in {MANIFEST} is missing")
    data = file.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != entry["sha256"]:
        raise BundleCorruptError(
            f"head file {entry['file']!r} is corrupt: sha256 {actual[:12]}… "
            f"does not match the manifest's {entry['sha256'][:12]}…"
        )
    return data


def _check_schema(
    schema: object, what: str, error: type[BundleError] = BundleError
) -> list[dict[str, Any]]:
    """An ordered list of JSON objects with a string "name"; returned as plain JSON values."""
    if isinstance(schema, str | bytes) or not isinstance(schema, Sequence):
        raise error(f"{what} must be a list of objects, got {type(schema).__name__}")
    for i, entry in enumerate(schema):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            raise error(f"{what}[{i}] must be an object with a string 'name', got {entry!r}")
    # The JSON round trip makes tuples lists, so a schema compares equal to its saved self.
    return [_json_object(entry, f"{what}[{i}]", error) for i, entry in enumerate(schema)]


def _compare_schemas(bundle: list[dict[str, Any]], given: list[dict[str, Any]]) -> None:
    """Raise BundleMismatchError naming the first difference between two feature schemas."""
    for i, (ours, theirs) in enumerate(zip(bundle, given, strict=False)):
        if ours["name"] != theirs["name"]:
            raise BundleMismatchError(
                f"feature schema differs at position {i}: bundle has "
                f"{ours['name']!r}, model has {theirs['name']!r}"
            )
        if ours != theirs:
            raise BundleMismatchError(
                f"feature schema differs at position {i} ({ours['name']!r}): bundle has "
                f"{json.dumps(ours, sort_keys=True)}, model has "
                f"{json.dumps(theirs, sort_keys=True)}"
            )
    if len(bundle) != len(given):
        raise BundleMismatchError(
            f"feature schema length differs: bundle has {len(bundle)} "
            f"features, model has {len(given)}"
        )


# --- helpers ---------------------------------------------------------------------------------


def _json_object(
    value: object, what: str, error: type[BundleError] = BundleError
) -> dict[str, Any]:
    """A JSON-ready copy of a mapping: numpy scalars/arrays become Python values.

    Raises ``error`` naming the offending key path for non-finite numbers and non-JSON types.
    """
    if not isinstance(value, Mapping):
        raise error(f"{what} must be a JSON object (a mapping), got {type(value).__name__}")
    return _to_json(value, what, error)


def _to_json(value: object, where: str, error: type[BundleError]) -> Any:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise error(f"{where} is {value}; JSON has no NaN/inf (store null or a string)")
        return value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise error(f"{where} has a non-string key {key!r}")
            out[key] = _to_json(item, f"{where}.{key}", error)
        return out
    if isinstance(value, list | tuple):
        return [_to_json(item, f"{where}[{i}]", error) for i, item in enumerate(value)]
    raise error(f"{where} has a value of type {type(value).__name__}, which JSON cannot hold")


def _short(fingerprint: str) -> str:
    """'sha256:0123456789ab…' — enough to tell two fingerprints apart in a message."""
    return f"{fingerprint[:19]}…" if len(fingerprint) > 19 else fingerprint


def _check_fitted_on(value: object, error: type[BundleError]) -> dict[str, str]:
    """``{"device": "cpu" | "cuda", "dtype": <model dtype>, ...}``; ``error`` otherwise."""
    from detectors.precision import MODEL_DTYPES

    if (
        not isinstance(value, dict)
        or not isinstance(value.get("device"), str)
        or not value["device"]
        or value.get("dtype") not in MODEL_DTYPES
        or not all(isinstance(v, str) for v in value.values())
    ):
        raise error(
            "manifest field 'fitted_on' must be {'device': 'cpu', 'cuda', ..., 'dtype': one of "
            f"{list(MODEL_DTYPES)}}}, got {value!r}"[:300]
        )
    return value


def _versions() -> dict[str, str]:
    import onnx
    import skl2onnx
    import sklearn

    try:
        gradsentry = importlib.metadata.version("gradsentry")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        gradsentry = "unknown"
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "skl2onnx": skl2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "gradsentry": gradsentry,
    }


def _write(file: Path, data: bytes) -> None:
    with open(file, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _check_destination(path: Path, overwrite: bool) -> None:
    """Refuse to replace anything unless asked, and even then only a bundle or empty dir."""
    if not (path.exists() or path.is_symlink()):
        return
    if not overwrite:
        raise BundleExistsError(f"{path} already exists; pass overwrite=True to replace it")
    if path.is_symlink() or not path.is_dir():
        raise BundleExistsError(f"{path} exists and is not a directory; refusing to replace it")
    if not (path / MANIFEST).is_file() and any(path.iterdir()):
        raise BundleExistsError(
            f"{path} is a non-empty directory without {MANIFEST}; "
            "refusing to replace something that is not a bundle"
        )


def _move_into_place(tmp: Path, path: Path, overwrite: bool) -> None:
    """Rename the finished temporary directory to ``path``, keeping any old bundle until then."""
    if not path.exists():
        try:
            os.rename(tmp, path)
        except OSError as exc:  # created by someone else meanwhile
            raise BundleExistsError(f"{path} appeared while saving; not replacing it") from exc
        return
    _check_destination(path, overwrite)
    old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)
