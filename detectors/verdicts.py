"""What scoring a batch returns: per-input predictions, scores, kinds and features.

NumPy only: the gRPC process receives these from the model worker without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Verdicts:
    """Per-input results for a batch of B inputs.

    logits float32 [B, C]; probabilities float32 [B, C]; score float64 [B] =
    P(challenging); flagged bool [B] (score ≥ threshold); kind_scores kind -> [B];
    features float64 [B, F]; timings: seconds per stage for the whole batch — "forward",
    "backward" (confounding backward + per-layer norms), "statistics" (logit and
    distance features) and "detector" (H).
    """

    logits: np.ndarray
    probabilities: np.ndarray
    score: np.ndarray
    flagged: np.ndarray
    kind_scores: dict[str, np.ndarray]
    features: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def predicted(self) -> np.ndarray:
        """int64 [B]: the classifier's predicted class."""
        return self.logits.argmax(1)

    @property
    def kind(self) -> list[str | None]:
        """Most likely challenge kind per input (None where the detector has no kinds)."""
        if not self.kind_scores:
            return [None] * len(self.score)
        names = list(self.kind_scores)
        stacked = np.stack([self.kind_scores[k] for k in names], axis=1)
        return [names[i] for i in stacked.argmax(1)]
