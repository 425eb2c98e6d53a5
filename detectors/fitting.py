"""Fit H: clean in-distribution inputs versus generated challenges, all through the probe.

Transport-agnostic and CLI-free: ``fit_detector`` takes arrays and challenge objects
and returns the fitted extractor and detector plus a JSON-ready summary; the CLI and
the demo builder call it, and ``write_bundle`` stores the result.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from detectors.bundle import model_fingerprint, save_bundle
from detectors.challenges import Challenge
from detectors.detector import ReliabilityDetector
from detectors.features import DEFAULT_LOSSES, FeatureExtractor
from detectors.precision import fitted_on
from detectors.setcache import SetCache

#: Attribution-only sets are seeded from seed + this + their position (fit sets: seed + 1 + i).
ATTRIBUTION_SEEDS = 100


@dataclass
class FitResult:
    """The fitted pieces and what describes them."""

    extractor: FeatureExtractor
    detector: ReliabilityDetector
    summary: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)


def fit_detector(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    challenges: Sequence[Challenge],
    *,
    attribution_challenges: Sequence[Challenge] = (),
    attribution_limit: int | None = None,
    stats_images: np.ndarray | None = None,
    stats_labels: np.ndarray | None = None,
    losses: Sequence[str] = DEFAULT_LOSSES,
    views: Sequence[str] = (),
    classifier: str = "logistic",
    strategy: str = "per_kind",
    target_fpr: float = 0.05,
    calibration_fraction: float = 0.5,
    seed: int = 0,
    batch_size: int = 128,
    progress: bool = True,
    cache: SetCache | None = None,
    challenge_model: nn.Module | None = None,
) -> FitResult:
    """Fit on clean ``images`` float32 [N, C, H, W] (labels int64 [N]) and one generated
    set per challenge (made from the same clean images, seeded).

    stats_images/labels: clean labelled data for the feature statistics (activation and
    gradient-novelty distances). Without them, a seeded half of ``images`` fits the
    statistics and the other half is H's clean data: statistics fitted on H's own clean
    rows make those rows look cleaner than any fresh input, and the calibrated threshold
    would then flag far more clean traffic than the target rate.
    calibration_fraction: share of H's clean rows held out to calibrate the threshold.
    challenge_model: the model the challenges are generated against (default ``model``); a
    float16/bfloat16 ``model`` passes its float32 original, as attack libraries feed float32.
    attribution_challenges: more generators, made from the same clean images, that only
    the kind-attribution head is trained on (the detection heads see ``challenges`` only),
    from the first ``attribution_limit`` of H's clean images (None: all).
    views: squeezed views whose prediction shift is a feature (``detectors.views``).
    """
    if not challenges:
        raise ValueError("name at least one challenge to fit against")
    cache = cache or SetCache(None)
    if stats_images is None:
        order = np.random.default_rng(seed).permutation(len(images))
        half = len(images) // 2
        stats_images, stats_labels = images[order[:half]], labels[order[:half]]
        images, labels = images[order[half:]], labels[order[half:]]
    elif stats_labels is None:
        raise ValueError("stats_images need stats_labels")
    extractor = FeatureExtractor(model, losses=losses, views=views)
    extractor.fit(
        stats_images,
        stats_labels,
        batch_size=batch_size,
        progress=_desc(progress, "feature statistics"),
    )
    rows = [
        extractor.extract_images(images, batch_size, _desc(progress, "features clean")).features
    ]
    kinds = ["clean"] * len(images)
    for i, challenge in enumerate(challenges):
        made = cache.generate(
            challenge,
            challenge_model or model,
            images,
            labels,
            seed=seed + 1 + i,
            progress=progress,
        )
        rows.append(
            extractor.extract_images(made, batch_size, _desc(progress, challenge.spec)).features
        )
        kinds += [challenge.kind] * len(made)
    extra_rows, extra_kinds = [], []
    for i, challenge in enumerate(attribution_challenges):
        made = cache.generate(
            challenge,
            challenge_model or model,
            images[:attribution_limit],
            labels[:attribution_limit],
            seed=seed + ATTRIBUTION_SEEDS + i,
            progress=progress,
        )
        extra_rows.append(
            extractor.extract_images(made, batch_size, _desc(progress, challenge.spec)).features
        )
        extra_kinds += [challenge.kind] * len(made)
    detector = ReliabilityDetector(
        classifier=classifier,
        strategy=strategy,
        target_fpr=target_fpr,
        calibration_fraction=calibration_fraction,
        log_columns=extractor.log_columns,
        random_state=seed,
    ).fit(
        np.concatenate(rows),
        np.array(kinds),
        np.concatenate(extra_rows) if extra_rows else None,
        np.array(extra_kinds) if extra_rows else None,
    )
    summary = {
        "n_clean": len(images),
        "challenges": [{"spec": c.spec, "kind": c.kind} for c in challenges],
        "n_attribution_images": len(images[:attribution_limit]) if attribution_challenges else 0,
        "attribution_challenges": [
            {"spec": c.spec, "kind": c.kind} for c in attribution_challenges
        ],
        "losses": list(losses),
        "views": list(extractor.views),
        "seed": seed,
        "n_stats": len(stats_images),
    }
    return FitResult(extractor, detector, summary)


def write_bundle(
    result: FitResult,
    model: nn.Module,
    path: str | os.PathLike[str],
    overwrite: bool = False,
    fingerprint: str | None = None,
) -> Path:
    """Save the fitted detector with everything needed to recompute its features.

    ``fingerprint``: the model's fingerprint as it is stored and loaded (default: of
    ``model``); a model fitted after a cast to float16/bfloat16 passes the one taken before
    the cast, which is what a server checks before casting it the same way. The device and
    dtype the features were computed at are recorded as ``fitted_on``."""
    return save_bundle(
        path,
        result.detector,
        feature_schema=result.extractor.schema,
        feature_spec=result.extractor.to_dict(),
        model_fingerprint=fingerprint or model_fingerprint(model),
        loss=result.extractor.losses[0],
        fit_summary=result.summary,
        metrics=result.metrics,
        overwrite=overwrite,
        fitted_on=fitted_on(model),
    )


def _desc(progress: bool, what: str) -> str | None:
    return what if progress else None
