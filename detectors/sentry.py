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

from detectors.bundle import Bundle, BundleFormatError, load_bundle, model_fingerprint
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
        cls, model: nn.Module, bundle_dir: str | os.PathLike[str], device: Device = "auto"
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
