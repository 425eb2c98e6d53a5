"""How the served model computes: CUDA's numerics (``cuda_numerics``), and its dtype
(``model_dtype``) against the one its bundle was fitted at, with the measured difference
when they are not the same.

CUDA numerics. This torch lets cuDNN convolutions use TF32 (10-bit mantissa products) by
default and picks convolution algorithms by timing when asked to; emulated on the CPU, TF32
moved the demo's features by a median 7e-4 relative (up to 13.5%) and scores by up to
1.9e-3 against a 0.014 threshold. ``deterministic`` (the default) turns TF32 off for
matmuls and convolutions, asks for deterministic algorithms (``warn_only``: an op without
one warns instead of failing a request), turns cuDNN's benchmark off and sets
``CUBLAS_WORKSPACE_CONFIG`` (cuBLAS is deterministic only with a fixed workspace, and reads
the variable when it creates its first handle, so it is set before the model first runs).
``fast`` is the reverse: TF32 on, cuDNN benchmark on, no determinism.

A bundle's H was fitted on features computed at one device and dtype (the manifest's
``fitted_on``; bundles without it were fitted in float32 on the CPU). Served at another,
the features move — bf16 by ~2⁻⁸ relative per op, TF32 convolutions by ~1e-3 — and so do
scores near the threshold. The server then scores a few seeded spec-shaped inputs both
ways at start-up and logs a warning with the largest differences it measured, so that an
operator sees what the change costs before trusting the verdicts (refit at the serving
precision to remove it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from detectors.precision import DEFAULT_FITTED_ON, cast_model, torch_dtype
from detectors.sentry import Sentry

log = logging.getLogger(__name__)

#: NVIDIA's documented cuBLAS setting for reproducible results (4 MiB x 8 workspaces).
CUBLAS_WORKSPACE = ":4096:8"


def apply_cuda_numerics(
    mode: str, environ: MutableMapping[str, str] | None = None
) -> dict[str, object]:
    """Set torch's global CUDA numerics for ``mode`` ("deterministic" or "fast") and return
    them (``cuda_numerics_state``). Call before the model first runs on the GPU; a
    ``CUBLAS_WORKSPACE_CONFIG`` already in ``environ`` (default ``os.environ``) is kept."""
    env = os.environ if environ is None else environ
    if mode == "deterministic":
        if "CUBLAS_WORKSPACE_CONFIG" not in env and torch.cuda.is_initialized():
            log.warning(
                "CUDA started before CUBLAS_WORKSPACE_CONFIG was set: cuBLAS may not be "
                "deterministic in this process (set it in the environment)"
            )
        env.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    elif mode == "fast":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True
        torch.use_deterministic_algorithms(False)
    else:
        raise ValueError(f"cuda_numerics must be 'deterministic' or 'fast', got {mode!r}")
    state = cuda_numerics_state(env)
    log.info("CUDA numerics %s: %s", mode, state)
    return state


def cuda_numerics_state(environ: MutableMapping[str, str] | None = None) -> dict[str, object]:
    """torch's current CUDA numerics flags (readable without a GPU)."""
    env = os.environ if environ is None else environ
    return {
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cublas_workspace_config": env.get("CUBLAS_WORKSPACE_CONFIG", ""),
    }


#: Inputs scored both ways when the serving precision differs from the fitted one.
COMPARE_ROWS = 8


@dataclass(frozen=True)
class PrecisionDifference:
    """Largest differences between verdicts at the fitted and at the serving precision.

    feature_rel: max over columns of |Δ| / the column's largest |value|; score_abs: max
    |Δ score|; flips: inputs whose flag changed, of ``rows``."""

    fitted: dict[str, str]
    served: dict[str, str]
    feature_rel: float
    score_abs: float
    flips: int
    rows: int


def fitted_on(manifest: dict) -> dict[str, str]:
    """The device type and dtype a bundle's features were computed at."""
    entry = manifest.get("fitted_on") or DEFAULT_FITTED_ON
    return {"device": str(entry["device"]), "dtype": str(entry["dtype"])}


def serve_at(
    sentry: Sentry, model: nn.Module, device: torch.device, dtype: str, x: torch.Tensor
) -> PrecisionDifference | None:
    """Put ``model`` (the Sentry's, checked against its bundle at the dtype it was loaded
    in) on ``device`` in ``dtype``, in place. When the bundle was fitted at another device
    type or dtype, score ``x`` [N, ...] (spec-shaped inputs) at the fitted precision first
    (on the fitted device when this machine has it) and then at the serving one, log a
    warning with the differences, and return them; None when nothing differs."""
    fitted = fitted_on(sentry.bundle.manifest)
    served = {"device": device.type, "dtype": dtype}
    if fitted == served:
        cast_model(model, dtype)
        return None
    ref_device = torch.device(fitted["device"]) if _have(fitted["device"]) else device
    if ref_device.type != fitted["device"]:
        log.warning(
            "bundle %s was fitted on %s, which this machine does not have: the difference "
            "below is measured at its dtype on %s and leaves the device's own out",
            sentry.bundle.path.name,
            fitted["device"],
            ref_device.type,
        )
    model.to(device=ref_device, dtype=torch_dtype(fitted["dtype"]))
    before = sentry.check(x.to(ref_device))
    model.to(device=device, dtype=torch_dtype(dtype))
    after = sentry.check(x.to(device))
    scale = np.abs(before.features).max(axis=0, keepdims=True)
    rel = np.abs(after.features - before.features) / np.maximum(scale, 1e-300)
    diff = PrecisionDifference(
        fitted=fitted,
        served=served,
        feature_rel=float(rel.max()),
        score_abs=float(np.abs(after.score - before.score).max()),
        flips=int((after.flagged != before.flagged).sum()),
        rows=len(x),
    )
    log.warning(
        "bundle %s was fitted in %s on %s, served in %s on %s: on %d test inputs the "
        "features differ by up to %.3g (relative to each column's scale), the scores by up "
        "to %.3g (threshold %.4g), %d flag(s) flip; refit at model_dtype %s to remove this",
        sentry.bundle.path.name,
        fitted["dtype"],
        fitted["device"],
        dtype,
        device.type,
        diff.rows,
        diff.feature_rel,
        diff.score_abs,
        sentry.threshold,
        diff.flips,
        dtype,
    )
    return diff


def _have(device_type: str) -> bool:
    if device_type == "cpu":
        return True
    if device_type == "cuda":
        return torch.cuda.is_available()
    return False
