"""How the served model computes: its dtype (``model_dtype``) against the one its bundle was
fitted at, and the measured difference when they are not the same.

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
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from detectors.precision import DEFAULT_FITTED_ON, cast_model, torch_dtype
from detectors.sentry import Sentry

log = logging.getLogger(__name__)

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
