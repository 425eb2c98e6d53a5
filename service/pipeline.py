"""Transport-agnostic scoring: validated input arrays -> one Sentry batch -> per-input results.

The pipeline knows nothing about gRPC; the servicer (and later the batcher) hand it lists of
arrays [1, C, H, W] produced by ``service.codec`` and get plain ``Result`` objects back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from detectors.sentry import Sentry, Verdicts
from service.spec import InputSpec


class PipelineError(RuntimeError):
    """The model or detector cannot serve this spec (a server-side configuration problem)."""


@dataclass(frozen=True)
class Result:
    """The outcome for one input.

    probabilities float32 [num_classes]; features float64 [num_features]; ``kind`` is the
    most likely challenge kind (None when the detector has no kinds); ``timings`` holds
    seconds for "queue" (waiting for the model), "forward", "backward", "statistics" and
    "detector" (of the whole batch) and "batch_size".
    """

    predicted_class: int
    label: str
    probabilities: np.ndarray
    score: float
    flagged: bool
    threshold: float
    kind: str | None
    kind_scores: dict[str, float]
    features: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)


class Pipeline:
    """Scores batches of validated inputs with one Sentry on one device.

    Calls are serialised with a lock: the feature extractor installs hooks on the model, so
    two batches must never run through it at once.
    """

    def __init__(
        self, sentry: Sentry, spec: InputSpec, device: torch.device, max_batch_size: int
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.sentry = sentry
        self.spec = spec
        self.device = device
        self.max_batch_size = max_batch_size
        self._lock = threading.Lock()

    @property
    def feature_names(self) -> list[str]:
        """Names of the detector's feature columns, in order."""
        return [str(col["name"]) for col in self.sentry.bundle.manifest["feature_schema"]]

    @property
    def kinds(self) -> list[str]:
        """Challenge kinds the detector distinguishes."""
        return [str(k) for k in self.sentry.bundle.manifest["kinds"]]

    def run(self, inputs: Sequence[np.ndarray]) -> list[Result]:
        """Score inputs, each [1, C, H, W] of ``spec.dtype``, in chunks of max_batch_size."""
        results: list[Result] = []
        for start in range(0, len(inputs), self.max_batch_size):
            results.extend(self._run_batch(inputs[start : start + self.max_batch_size]))
        return results

    def warm_up(self) -> list[Result]:
        """Score one input at the bottom of the value range (first-call allocations, lazy
        initialisation) and check the labels match the model's number of classes."""
        x = np.full((1, *self.spec.shape), self.spec.value_range[0], dtype=self.spec.dtype)
        with self._lock:
            verdicts = self._check(x)
        n_classes = verdicts.logits.shape[1]
        if self.spec.labels and len(self.spec.labels) != n_classes:
            raise PipelineError(
                f"{len(self.spec.labels)} labels are configured but the model has "
                f"{n_classes} classes"
            )
        return self._split(verdicts)

    def _run_batch(self, inputs: Sequence[np.ndarray]) -> list[Result]:
        if not inputs:
            return []
        batch = np.concatenate(list(inputs), axis=0)
        t0 = time.perf_counter()
        with self._lock:
            waited = time.perf_counter() - t0
            verdicts = self._check(batch)
        return self._split(verdicts, queue_seconds=waited)

    def _check(self, batch: np.ndarray) -> Verdicts:
        """batch [B, C, H, W] -> Verdicts (caller holds the lock)."""
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        return self.sentry.check(x)

    def _split(self, v: Verdicts, queue_seconds: float = 0.0) -> list[Result]:
        kinds = v.kind
        labels = self.spec.labels
        n = len(v.score)
        timings = {
            **{k: float(t) for k, t in v.timings.items()},
            "queue": queue_seconds,
            "batch_size": float(n),
        }
        out: list[Result] = []
        for i in range(n):
            cls = int(v.predicted[i])
            out.append(
                Result(
                    predicted_class=cls,
                    label=labels[cls] if cls < len(labels) else "",
                    probabilities=v.probabilities[i],
                    score=float(v.score[i]),
                    flagged=bool(v.flagged[i]),
                    threshold=self.sentry.threshold,
                    kind=kinds[i],
                    kind_scores={k: float(s[i]) for k, s in v.kind_scores.items()},
                    features=v.features[i],
                    timings=timings,
                )
            )
        return out
