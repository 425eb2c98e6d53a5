"""What the model worker does when the device fails (``detectors.faults`` tells which).

- Out of memory: the cache is emptied and the batch scored in halves, recursively, down to
  single inputs; when a single input does not fit, the batch fails with
  ``DeviceMemoryError`` (RESOURCE_EXHAUSTED: the device is full, not the request wrong).
  Halves are other batch shapes than the fixed GPU batch, so their answers may differ from
  a full batch's by float rounding; a warning says so.
- A device fault (a sticky CUDA error): the worker process exits with
  ``DEVICE_FAULT_EXIT``; the server fails that batch with UNAVAILABLE (retry) and starts a
  new worker, with a fresh CUDA context, for the next batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from detectors.faults import free_device_memory
from detectors.verdicts import Verdicts
from service.errors import DEVICE_FAULT_EXIT, DeviceMemoryError

log = logging.getLogger(__name__)


def check_in_pieces(check: Callable[[torch.Tensor], Verdicts], x: torch.Tensor) -> Verdicts:
    """``check(x)`` for x [B, ...]; on out-of-memory, free the cache and check each half.
    DeviceMemoryError when a single input does not fit."""
    try:
        return check(x)
    except torch.OutOfMemoryError as exc:
        message = str(exc).splitlines()[0] if str(exc) else "out of memory"
    # Outside the handler: the traceback's frames hold the failed batch's tensors.
    free_device_memory(x.device)
    if len(x) == 1:
        raise DeviceMemoryError(
            f"the model ran out of device memory on this input alone ({message})"
        )
    half = (len(x) + 1) // 2
    log.warning(
        "out of device memory on a batch of %d (%s): scoring it in halves of %d and %d; "
        "their answers may differ from a full batch's by float rounding",
        len(x),
        message,
        half,
        len(x) - half,
    )
    return concat_verdicts([check_in_pieces(check, x[:half]), check_in_pieces(check, x[half:])])


def concat_verdicts(parts: list[Verdicts]) -> Verdicts:
    """Verdicts of consecutive pieces of one batch as one (timings added up)."""
    first = parts[0]
    return Verdicts(
        logits=np.concatenate([p.logits for p in parts]),
        probabilities=np.concatenate([p.probabilities for p in parts]),
        score=np.concatenate([p.score for p in parts]),
        flagged=np.concatenate([p.flagged for p in parts]),
        kind_scores={
            k: np.concatenate([p.kind_scores[k] for p in parts]) for k in first.kind_scores
        },
        features=np.concatenate([p.features for p in parts]),
        timings={k: float(sum(p.timings.get(k, 0.0) for p in parts)) for k in first.timings},
    )


__all__ = ["DEVICE_FAULT_EXIT", "check_in_pieces", "concat_verdicts"]
