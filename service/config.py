"""The server's one typed configuration: defaults, then a YAML file, then GRADSENTRY_* env.

``load_config(path, environ)`` builds a frozen ``ServerConfig`` once at start-up. The YAML
file is a flat mapping of field names (see ``ServerConfig``); each environment variable
``GRADSENTRY_<FIELD>`` (upper case) overrides its field and is parsed as a YAML scalar or
flow sequence (``GRADSENTRY_INPUT_SHAPE="[3, 32, 32]"``). Unknown keys, unknown
``GRADSENTRY_*`` variables and ill-typed values raise ``ConfigError`` naming the key.
Relative paths in a file are resolved against the file's directory.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from detectors.demo import ARTIFACTS
from service.spec import InputSpec, SpecError

ENV_PREFIX = "GRADSENTRY_"
# GRADSENTRY_* variables that are not fields (read by launchers, not by load_config).
ENV_NOT_FIELDS = frozenset({"GRADSENTRY_CONFIG"})
DEVICES = ("auto", "cpu", "cuda")
MODEL_WORKERS = ("process", "inline")
# detectors.precision.MODEL_DTYPES, named here so that reading a config imports no torch
# (a test checks the two agree).
MODEL_DTYPES = ("float32", "float16", "bfloat16")
CUDA_NUMERICS = ("deterministic", "fast")
# The model loaders' names (service.models registers them; a test checks the two agree).
# Named here so that reading a config imports neither torch nor any loader.
MODEL_FORMATS = ("eager", "torchscript", "mar", "onnx")
_PATH_FIELDS = (
    "model_path",
    "model_weights",
    "bundle",
    "tls_cert_file",
    "tls_key_file",
    "tls_client_ca_file",
    "auth_token_file",
)


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


@dataclass(frozen=True)
class ServerConfig:
    """Everything the sidecar needs to start; defaults serve the bundled demo locally.

    Model (``service.models`` loads it; empty strings mean "not set"):

    - ``model_format`` "eager" (default): ``model_factory`` ("module:callable" returning an
      ``nn.Module``) built, then ``model_weights`` (a state dict) loaded into it with
      ``torch.load(weights_only=True)``. Neither set: the bundled demo model; only
      ``model_weights`` set: the demo architecture with those weights; only
      ``model_factory`` set: the factory's own weights.
    - "torchscript", "mar" (TorchServe archive), "onnx", or "auto" (detected from the file):
      ``model_path`` is the deployed artifact, the very file the model server serves.
      ``model_factory`` is optional here: the eager twin of a TorchScript module (required
      for "torchscript"), or an override of a .mar's ``modelFile``. ``model_weights`` is
      refused: the weights are in the artifact.

    ``bundle`` is the detector bundle fitted for that model.

    Input (each unset field — empty — is taken from what the artifact states: a .mar's
    ``input_spec.json`` and ``index_to_name.json``, an ONNX graph's input shape and dtype; a
    field the config sets wins over the artifact; with neither, the demo's values: [1, 28,
    28] float32 in [0, 1], no normalisation, no labels — the demo model has labels "0".."9"):
    ``input_shape`` (C, H, W), ``input_dtype``, ``input_range`` (min, max), optional
    per-channel ``input_mean`` / ``input_std`` applied by the server, class ``labels``.

    Security (each empty = off): ``tls_cert_file`` + ``tls_key_file`` (PEM, both or neither)
    serve TLS; ``tls_client_ca_file`` (PEM) also requires client certificates signed by it
    (mutual TLS); ``auth_token_file`` holds a bearer token that Reliability calls must send
    as ``authorization: Bearer <token>`` (a file, so the secret is not in env or argv).
    """

    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int = 9464
    # Address the plain-HTTP metrics endpoint binds; empty: ``host``. Set it apart when
    # gRPC is exposed with TLS and auth but metrics should stay on a private interface.
    metrics_host: str = ""
    # The Open Inference Protocol over HTTP/REST (service.transport.oip_rest), off by
    # default: on ``rest_host`` (empty: ``host``) and ``rest_port`` (0 picks a free port).
    # OIP over gRPC is always served on ``port``, beside gradsentry.v1.
    rest_enabled: bool = False
    rest_host: str = ""
    rest_port: int = 8080
    # The model's name in the Open Inference Protocol (/v2/models/<name>, ModelInfer's
    # model_name).
    model_name: str = "gradsentry"
    # gRPC server reflection (grpcurl list/describe without the proto files); false turns
    # it off. It needs no token when auth is on.
    reflection: bool = True
    max_batch_size: int = 32
    max_delay_ms: float = 5.0
    # A batch that holds the size smaller batches are padded to anyway also leaves before
    # max_delay_ms when waiting would leave the model idle: at once when the model is idle,
    # just before it should be free with a batch in flight (service.engine.pacing); false:
    # always wait the full delay for company.
    dispatch_when_idle: bool = True
    queue_size: int = 256
    device: str = "auto"
    # The dtype the model runs in: "float32", "float16" or "bfloat16" (the model is cast
    # after its bundle's fingerprint is checked; the probe still sums in float32, see
    # docs/gpu.md). A bundle fitted at another dtype or device is served with a warning
    # that gives the measured difference.
    model_dtype: str = "float32"
    # On a CUDA device (service.numerics): "deterministic" (default) turns TF32 off and asks
    # for deterministic kernels (the features match the CPU's to float32 rounding and an
    # answer never depends on the run); "fast" lets cuDNN/cuBLAS use TF32 and pick the
    # fastest kernels (features move by ~1e-3 relative; benchmark before choosing it).
    cuda_numerics: str = "deterministic"
    model_format: str = "eager"
    model_path: str = ""
    model_factory: str = ""
    model_weights: str = ""
    bundle: str = str(ARTIFACTS / "bundle")
    input_shape: tuple[int, ...] = ()
    input_dtype: str = ""
    input_range: tuple[float, ...] = ()
    input_mean: tuple[float, ...] = ()
    input_std: tuple[float, ...] = ()
    labels: tuple[str, ...] = ()
    max_message_bytes: int = 16 * 1024 * 1024
    # Unary calls (Check, CheckBatch, OIP ModelInfer over gRPC and REST together) served at
    # once (more are refused with RESOURCE_EXHAUSTED / HTTP 429 before their message is read;
    # service.dataplane.admission). Fewer than max_batch_size would cap how many calls can
    # share a batch; leave headroom over the expected concurrent clients: a client's next
    # call may arrive before its last one has been released.
    max_workers: int = 256
    # CheckStream calls open at once, and health Watch / reflection streams open at once
    # (these need no token when auth is on); each has its own budget, so that neither can
    # starve the other or health Check and GetInfo, which have none.
    max_streams: int = 64
    max_open_streams: int = 16
    # A stream with no message either way for this long, or open this long, is ended with
    # DEADLINE_EXCEEDED (0: never), so that idle streams cannot hold their budget forever.
    stream_idle_seconds: float = 60.0
    stream_max_seconds: float = 3600.0
    # Encoded images (and large tensors) are decoded by this many threads, off the event
    # loop; one call's inputs must decode within decode_budget_seconds or it is refused.
    decode_workers: int = 2
    decode_budget_seconds: float = 2.0
    grace_seconds: float = 10.0
    # "process": the model runs in a child process (service.engine.worker), so gRPC handling
    # and the model use separate cores; "inline": in the server process (simplest to debug).
    model_worker: str = "process"
    # With model_worker "process" (applied by `gradsentry serve`, which owns its process):
    # how much lower (Linux nice increment) the gRPC process's
    # CPU priority is than the model worker's, so that the worker, the bottleneck, runs
    # first when both want a core; 0 leaves them equal.
    server_nice: int = 10
    # torch intra-op threads for the model. 1 by default: kernels that split a sum over
    # several threads split it by batch size, so an input's answer would depend on the batch
    # it shares (and torch's own default, one thread per core of the host, oversubscribes a
    # container's CPU limit). Raise it for a large model on cores to spare; 0 keeps this
    # process's setting, which the model worker process then uses too.
    torch_threads: int = 1
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    auth_token_file: str = ""

    def __post_init__(self) -> None:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError(
                "tls_cert_file and tls_key_file: set both (TLS) or neither (plaintext)"
            )
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ConfigError(
                "tls_client_ca_file: mutual TLS needs TLS; set tls_cert_file and tls_key_file"
            )
        for name in ("port", "metrics_port", "rest_port"):
            value = getattr(self, name)
            if not 0 <= value <= 65535:
                raise ConfigError(f"{name}: must be a port number in 0..65535, got {value}")
        for name in (
            "max_batch_size",
            "queue_size",
            "max_message_bytes",
            "max_workers",
            "max_streams",
            "max_open_streams",
            "decode_workers",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("max_delay_ms", "grace_seconds", "stream_idle_seconds", "stream_max_seconds"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name}: must be a finite number >= 0, got {value}")
        if not (math.isfinite(self.decode_budget_seconds) and self.decode_budget_seconds > 0):
            raise ConfigError(
                f"decode_budget_seconds: must be a finite number > 0, got "
                f"{self.decode_budget_seconds}"
            )
        if not self.model_name or "/" in self.model_name or not self.model_name.isprintable():
            raise ConfigError(
                f"model_name: must be non-empty, printable and without '/', got {self.model_name!r}"
            )
        if self.model_worker not in MODEL_WORKERS:
            raise ConfigError(
                f"model_worker: must be one of {list(MODEL_WORKERS)}, got {self.model_worker!r}"
            )
        if self.model_dtype not in MODEL_DTYPES:
            raise ConfigError(
                f"model_dtype: must be one of {list(MODEL_DTYPES)}, got {self.model_dtype!r}"
            )
        if self.cuda_numerics not in CUDA_NUMERICS:
            raise ConfigError(
                f"cuda_numerics: must be one of {list(CUDA_NUMERICS)}, got {self.cuda_numerics!r}"
            )
        if not 0 <= self.server_nice <= 19:
            raise ConfigError(f"server_nice: must be in 0..19, got {self.server_nice}")
        if self.torch_threads < 0:
            raise ConfigError(
                f"torch_threads: must be >= 0 (0: torch's default), got {self.torch_threads}"
            )
        base = self.device.split(":", 1)[0]
        if base not in DEVICES or (":" in self.device and base != "cuda"):
            raise ConfigError(
                f"device: must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}"
            )
        self._check_model_fields()
        if self.input_shape and len(self.input_shape) != 3:
            raise ConfigError(f"input_shape: must be [C, H, W], got {list(self.input_shape)}")
        if self.input_range and len(self.input_range) != 2:
            raise ConfigError(f"input_range: must be [min, max], got {list(self.input_range)}")
        try:
            # Unset fields may still come from the artifact; check what is set on its own
            # (mean/std against input_shape when set, else against their own length).
            channels = max(len(self.input_mean), len(self.input_std), 1)
            self.input_spec({"shape": (channels, 1, 1)})
        except SpecError as exc:
            raise ConfigError(f"input: {exc}") from exc

    def _check_model_fields(self) -> None:
        known = ("auto", *MODEL_FORMATS)
        if self.model_format not in known:
            raise ConfigError(
                f"model_format: unknown format {self.model_format!r} (known: {', '.join(known)})"
            )
        if self.model_factory and ":" not in self.model_factory:
            raise ConfigError(
                "model_factory: must look like 'package.module:callable', "
                f"got {self.model_factory!r}"
            )
        if self.model_format == "eager":
            if self.model_path:
                raise ConfigError(
                    "model_path: not used with model_format 'eager' (the state dict goes in "
                    "model_weights); for a deployed artifact set model_format (torchscript, "
                    "mar, onnx or auto)"
                )
            return
        if not self.model_path:
            raise ConfigError(
                f"model_path: model_format {self.model_format!r} needs the path of the "
                "deployed model file (.mar, .pt, .onnx)"
            )
        if self.model_weights:
            raise ConfigError(
                f"model_weights: only for model_format 'eager'; with {self.model_format!r} the "
                "weights are read from model_path"
            )

    def input_spec(self, stated: Mapping[str, Any] | None = None) -> InputSpec:
        """The model's InputSpec: each input_* field and ``labels`` when set here, else the
        value in ``stated`` (InputSpec field names: what the artifact states about itself,
        see ``service.models.stated_spec``), else InputSpec's default. Raises SpecError."""
        fields: dict[str, Any] = dict(stated or {})
        own = {
            "shape": self.input_shape,
            "dtype": self.input_dtype,
            "value_range": self.input_range,
            "mean": self.input_mean,
            "std": self.input_std,
            "labels": self.labels,
        }
        fields.update({key: value for key, value in own.items() if value})
        # mean and std travel together: one set here replaces the artifact's pair.
        if self.input_mean or self.input_std:
            fields["mean"], fields["std"] = self.input_mean, self.input_std
        return InputSpec(**fields)


def load_config(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> ServerConfig:
    """Defaults, overridden by the YAML file at ``path`` (if any), then by ``environ``
    (``os.environ`` when None)."""
    values: dict[str, Any] = {}
    if path is not None:
        values.update(_read_file(Path(path)))
    env = os.environ if environ is None else environ
    values.update(_read_env(env))
    return build_config(values)


def build_config(values: Mapping[str, Any]) -> ServerConfig:
    """ServerConfig from raw (YAML-typed) values, checking every key and type."""
    hints = get_type_hints(ServerConfig)
    kwargs: dict[str, Any] = {}
    for key, raw in values.items():
        if key not in hints:
            raise ConfigError(f"{key}: unknown key; known keys are {sorted(hints)}")
        kwargs[key] = _coerce(key, raw, hints[key])
    return ServerConfig(**kwargs)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    for key in _PATH_FIELDS:
        if isinstance(data.get(key), str) and data[key] and not Path(data[key]).is_absolute():
            data[key] = str((path.parent / data[key]).resolve())
    return {str(k): v for k, v in data.items()}


def _read_env(environ: Mapping[str, str]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(ServerConfig)}
    out: dict[str, Any] = {}
    for var, text in environ.items():
        if not var.startswith(ENV_PREFIX) or var in ENV_NOT_FIELDS:
            continue
        key = var[len(ENV_PREFIX) :].lower()
        if key not in names:
            raise ConfigError(f"{var}: unknown setting; known keys are {sorted(names)}")
        if get_type_hints(ServerConfig)[key] is str:
            out[key] = text  # keep "0123"-like strings as typed
            continue
        try:
            out[key] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{var}: cannot parse {text!r}: {exc}") from exc
    return out


def _coerce(key: str, raw: Any, hint: Any) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        hint = next(a for a in get_args(hint) if a is not type(None))
        origin = get_origin(hint)
    if origin is tuple:
        (item,) = {a for a in get_args(hint) if a is not Ellipsis}
        if not isinstance(raw, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {raw!r}")
        return tuple(_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(raw))
    if hint is bool:
        if not isinstance(raw, bool):
            raise ConfigError(f"{key}: expected true or false, got {raw!r}")
        return raw
    if hint is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ConfigError(f"{key}: expected an integer, got {raw!r}")
        return raw
    if hint is float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {raw!r}")
        return float(raw)
    if hint is str:
        if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
            raise ConfigError(f"{key}: expected a string, got {raw!r}")
        return str(raw)
    raise ConfigError(f"{key}: unsupported type {hint!r}")  # pragma: no cover
