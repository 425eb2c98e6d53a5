"""OnnxDetector: H scored from exported ONNX heads with onnxruntime (no scikit-learn objects)."""

from __future__ import annotations

import logging
import math
import numbers
import re
from collections.abc import Mapping, Sequence

import numpy as np
import onnxruntime as ort

from detectors.detector import attribution
from detectors.detector.kinds import check_kind_list
from detectors.detector.scoring import ScoringMixin
from detectors.detector.strategies import get_strategy
from detectors.detector.transform import LogTransform

PROBA_OUTPUT = "probabilities"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
_INPUT_DTYPES = {"tensor(double)": np.float64, "tensor(float)": np.float32}

# "cpu" (the default: H's heads are a few float64 ai.onnx.ml ops, which have no CUDA
# kernels, so a GPU provider would only add copies), "auto" (the same), or "cuda" /
# "cuda:N" to ask onnxruntime's CUDA provider on device N, falling back to CPU with a log
# line when that provider is missing or does not take the session.
Device = str
_DEVICE = re.compile(r"^(cpu|auto|cuda(:[0-9]+)?)$")

log = logging.getLogger(__name__)


def providers_for(
    device: Device, available: Sequence[str]
) -> list[str | tuple[str, dict[str, str]]]:
    """The onnxruntime providers to ask for ``device``, given the ``available`` ones:
    CUDA with its ``device_id`` first when "cuda[:N]" is asked and present, CPU always."""
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise ValueError(f"device must be 'cpu', 'auto', 'cuda' or 'cuda:N', got {device!r}")
    if device.startswith("cuda") and CUDA in available:
        index = device.partition(":")[2] or "0"
        return [(CUDA, {"device_id": index}), CPU]
    return [CPU]


class InvalidOnnxHeadError(ValueError):
    """A head's bytes are not a usable ONNX classifier for this detector."""


class OnnxDetector(ScoringMixin):
    """Same scoring API as ``ReliabilityDetector``, from ONNX bytes plus the recorded metadata.

    Args:
        heads: {head name: serialized ONNX model} as produced by ``to_onnx``; the names must be
            the strategy's heads for ``kinds``, plus optionally the attribution head
            (``attribution.HEAD``, one probability per kind).
        transform: the numpy transform applied before the graphs.
        strategy: name in ``STRATEGIES``.
        kinds: the fitted challenge kinds.
        threshold: flagged = P(challenging) ≥ threshold, in [0, 1].
        device: "cpu" (default) or "auto": onnxruntime's CPU provider. "cuda" / "cuda:N":
            its CUDA provider on device N when present and actually selected by the
            session, else CPU, with a warning (``providers_for``).
        intra_op_threads: onnxruntime threads per session. H is a tiny model on [B, F]
            inputs, so one thread avoids contention with the classifier's own threads.
        attribution_temperature: temperature applied to the attribution head's
            probabilities (> 0; recorded at fit time).

    Attributes: ``kinds_``, ``threshold_``, ``transform_``, ``strategy_``, ``n_features_in_``,
    ``providers_`` (providers the sessions really use), ``device_`` ("cuda" or "cpu").
    """

    def __init__(
        self,
        heads: Mapping[str, bytes],
        transform: LogTransform,
        strategy: str,
        kinds: Sequence[str],
        threshold: float,
        *,
        device: Device = "cpu",
        intra_op_threads: int = 1,
        attribution_temperature: float = 1.0,
    ) -> None:
        if not isinstance(transform, LogTransform):
            raise TypeError(f"transform must be a LogTransform, got {type(transform).__name__}")
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, numbers.Real)
            or not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0)
        ):
            raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
        if (
            isinstance(attribution_temperature, bool)
            or not isinstance(attribution_temperature, numbers.Real)
            or not (math.isfinite(attribution_temperature) and attribution_temperature > 0)
        ):
            raise ValueError(
                f"attribution_temperature must be a number > 0, got {attribution_temperature!r}"
            )
        plan = providers_for(device, ort.get_available_providers())
        self.strategy_ = get_strategy(strategy)
        self.kinds_ = check_kind_list(kinds)
        expected = self.strategy_.head_names(self.kinds_)
        if attribution.HEAD in heads and attribution.HEAD not in expected:
            expected = [*expected, attribution.HEAD]
        if sorted(heads) != sorted(expected):
            raise ValueError(
                f"strategy {strategy!r} with kinds {list(self.kinds_)} needs heads "
                f"{expected} (and optionally {attribution.HEAD!r}), got {sorted(heads)}"
            )
        self.transform_ = transform
        self.threshold_ = float(threshold)
        self.attribution_temperature_ = float(attribution_temperature)
        self._sessions = {
            name: _session(name, heads[name], plan, intra_op_threads) for name in expected
        }
        widths = {name: _input_width(name, s) for name, s in self._sessions.items()}
        if len(set(widths.values())) != 1:
            raise InvalidOnnxHeadError(f"heads disagree on the number of features: {widths}")
        self.n_features_in_ = next(iter(widths.values()))
        if transform.n_features not in (None, self.n_features_in_):
            raise ValueError(
                f"transform has {transform.n_features} log_columns flags but the "
                f"heads take {self.n_features_in_} features"
            )
        # Input name and dtype per head, read once: the graphs may take float32 or float64.
        self._feeds = {
            name: (s.get_inputs()[0].name, _INPUT_DTYPES[s.get_inputs()[0].type])
            for name, s in self._sessions.items()
        }
        first = next(iter(self._sessions.values()))
        self.providers_ = list(first.get_providers())
        self.provider_options_ = dict(first.get_provider_options())
        self.device_ = "cuda" if CUDA in self.providers_ else "cpu"
        if device.startswith("cuda") and self.device_ == "cpu":
            log.warning(
                "detector: %s asked, onnxruntime's CUDA provider is not usable here "
                "(available: %s); scoring H on the CPU",
                device,
                ", ".join(ort.get_available_providers()),
            )

    def _head_probas(self, Xt: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for name, session in self._sessions.items():
            input_name, dtype = self._feeds[name]
            feed = {input_name: Xt.astype(dtype, copy=False)}
            out[name] = np.asarray(session.run([PROBA_OUTPUT], feed)[0], dtype=np.float64)
        return out

    def __repr__(self) -> str:
        return (
            f"OnnxDetector(strategy={self.strategy_.name!r}, kinds={list(self.kinds_)}, "
            f"threshold={self.threshold_:.6g}, device={self.device_!r})"
        )


def _session(
    name: str,
    model_bytes: bytes,
    plan: list[str | tuple[str, dict[str, str]]],
    threads: int,
) -> ort.InferenceSession:
    """An inference session for one head with the ``plan``'s providers; CPU alone when the
    CUDA provider cannot build it (a broken CUDA install raises; onnxruntime-gpu falls back
    to CPU by itself, which ``providers_`` then shows)."""
    if not isinstance(model_bytes, bytes | bytearray):
        raise TypeError(f"head {name!r} must be bytes, got {type(model_bytes).__name__}")
    # No separate onnx.checker pass: onnxruntime parses and checks the graph itself when it
    # builds the session (bad bytes, unknown ops and type errors fail below), the heads'
    # bytes are sha256-checked against the manifest, and not importing the onnx package
    # saves the model worker ~1 s at start-up.
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # onnxruntime's provider-fallback notices are not errors
    if len(plan) > 1:
        try:
            return ort.InferenceSession(bytes(model_bytes), options, providers=plan)
        except Exception:  # CPU is still correct; an invalid head fails again just below
            pass
    try:
        return ort.InferenceSession(bytes(model_bytes), options, providers=[CPU])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
        raise InvalidOnnxHeadError(
            f"head {name!r} is not a valid ONNX model for onnxruntime: {_first_line(exc)}"
        ) from exc


def _input_width(name: str, session: ort.InferenceSession) -> int:
    """Check the head's signature (one [N, F] float input, a probabilities output); return F."""
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type not in _INPUT_DTYPES:
        raise InvalidOnnxHeadError(
            f"head {name!r} must take one float/double tensor, got "
            f"{[(i.name, i.type) for i in inputs]}"
        )
    shape = inputs[0].shape
    if len(shape) != 2 or not isinstance(shape[1], int):
        raise InvalidOnnxHeadError(
            f"head {name!r} input must be [N, F] with a fixed F, got {shape}"
        )
    if PROBA_OUTPUT not in {o.name for o in session.get_outputs()}:
        raise InvalidOnnxHeadError(f"head {name!r} has no {PROBA_OUTPUT!r} output")
    return shape[1]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
