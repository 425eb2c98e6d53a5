"""Sentry: a model plus its fitted detector bundle, scoring input batches end to end.

This is the transport-agnostic core the CLI and the service share: features from the
probe, then H from the bundle's ONNX heads. Loading verifies that the bundle was fitted
for exactly this model (parameter fingerprint) and this feature schema.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch
from torch import nn

from detectors.bundle import (
    Bundle,
    BundleFormatError,
    BundleMismatchError,
    load_bundle,
    model_fingerprint,
)
from detectors.detector.runtime import Device
from detectors.features import FeatureExtractor
from detectors.verdicts import Verdicts

__all__ = ["Sentry", "Verdicts"]


class Sentry:
    """``Sentry.load(model, bundle_dir)``; ``sentry.check(x)`` with x float [B, ...]."""

    def __init__(self, extractor: FeatureExtractor, bundle: Bundle) -> None:
        self.extractor = extractor
        self.bundle = bundle
        self.detector = bundle.detector
        self.threshold = float(bundle.manifest["threshold"])

    @classmethod
    def load(
        cls, model: nn.Module, bundle_dir: str | os.PathLike[str], device: Device = "cpu"
    ) -> Sentry:
        """Verify and load; BundleError (a ValueError) names any mismatch."""
        # The fingerprint is checked first: another model's bundle is refused as such,
        # not with whatever its feature spec happens to trip over on this model.
        bundle = load_bundle(bundle_dir, model_fingerprint=model_fingerprint(model), device=device)
        try:
            extractor = FeatureExtractor.from_dict(model, bundle.manifest["feature_spec"])
        except ValueError as exc:  # the manifest is user input: report it as a bad bundle
            raise BundleFormatError(f"{bundle.path.name}: feature_spec: {exc}") from None
        bundle.check_schema(extractor.schema)
        return cls(extractor, bundle)

    def check_fits(self, x: torch.Tensor) -> Verdicts:
        """Score x [B, ...] once to prove the bundle fits the model beyond what its manifest
        shows: every statistic multiplies cleanly with the model's activations, the novelty
        statistics cover every class the model has (or, with class ids, name only classes
        it has), and every feature and score is finite.
        BundleMismatchError naming what does not fit; the verdicts otherwise."""
        where = f"bundle {self.bundle.path.name} does not fit this model"
        try:
            verdicts = self.check(x)
        except (ValueError, IndexError, RuntimeError) as exc:
            message = " ".join(str(exc).split())[:300]
            raise BundleMismatchError(f"{where}: {type(exc).__name__}: {message}") from None
        novelty = self.extractor.novelty_stats_
        n_classes = verdicts.logits.shape[1]
        # Statistics without class ids have row k for class k and must cover every class;
        # statistics with ids (fitted on data that holds a few of many classes) must name
        # only classes the model has.
        if novelty is not None and novelty.classes is None and len(novelty.means) < n_classes:
            raise BundleMismatchError(
                f"{where}: its novelty statistics cover {novelty.means.shape[0]} classes, the "
                f"model has {n_classes}"
            )
        if (
            novelty is not None
            and novelty.classes is not None
            and (novelty.classes.max(initial=-1) >= n_classes or novelty.classes.min(initial=0) < 0)
        ):
            raise BundleMismatchError(
                f"{where}: its novelty statistics name classes up to "
                f"{int(novelty.classes.max())}, the model has {n_classes}"
            )
        for name, values in (("features", verdicts.features), ("scores", verdicts.score)):
            if not np.isfinite(values).all():
                raise BundleMismatchError(f"{where}: its {name} are not finite on a test input")
        return verdicts

    def check(self, x: torch.Tensor) -> Verdicts:
        """Score one batch x [B, ...] (on the model's device)."""
        ext = self.extractor.extract(x)
        t1 = time.perf_counter()
        scores = self.detector.scores(ext.features)
        t2 = time.perf_counter()
        z = ext.logits - ext.logits.max(1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        return Verdicts(
            logits=ext.logits,
            probabilities=probs.astype(np.float32),
            score=scores.probability,
            flagged=scores.flagged,
            kind_scores=scores.kind_scores,
            features=ext.features,
            timings={**ext.timings, "detector": t2 - t1},
        )
