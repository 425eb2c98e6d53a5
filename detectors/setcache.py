"""On-disk cache of generated challenge sets, so re-running an evaluation skips the attacks.

A set is keyed by the challenge's canonical spec, the seed, the model's parameter
fingerprint (for challenges that use the model: attacks) and a hash of the clean
inputs: any change regenerates it. Files are plain
npz read with ``allow_pickle=False``; a corrupt file is regenerated, never trusted.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from torch import nn

from detectors.bundle import model_fingerprint
from detectors.challenges import Challenge, ChallengeContext


class SetCache:
    """``SetCache(directory)``; ``directory=None`` disables caching."""

    def __init__(self, directory: str | os.PathLike[str] | None) -> None:
        self.directory = Path(directory) if directory is not None else None

    def generate(
        self,
        challenge: Challenge,
        model: nn.Module,
        images: np.ndarray,
        labels: np.ndarray | None,
        *,
        seed: int,
        progress: bool = False,
    ) -> np.ndarray:
        """float32 [N, C, H, W]: the challenge applied to ``images``, cached when enabled."""
        path = self._path(challenge, model, images, seed)
        if path is not None and path.is_file():
            try:
                with np.load(path, allow_pickle=False) as data:
                    cached = data["images"]
                if cached.shape == images.shape and cached.dtype == np.float32:
                    return cached
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
                pass  # unreadable (empty, truncated, not an npz): regenerate below
        ctx = ChallengeContext(images, labels, model, seed, progress=progress)
        made = challenge.generate(ctx)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, images=made)
            os.replace(tmp, path)
        return made

    def _path(
        self, challenge: Challenge, model: nn.Module, images: np.ndarray, seed: int
    ) -> Path | None:
        if self.directory is None:
            return None
        # Hashed on every call, not memoised per model object: weights updated in place
        # (or a new model reusing a freed object's id) must not hit sets of old weights.
        # Sets that do not depend on the model (corruptions, OOD) are shared by every model.
        fp = model_fingerprint(model) if challenge.uses_model else "any model"
        h = hashlib.sha256()
        for part in (challenge.spec, str(seed), fp, str(images.shape)):
            h.update(part.encode() + b"\0")
        h.update(np.ascontiguousarray(images).tobytes())
        safe = "".join(ch if ch.isalnum() else "_" for ch in challenge.spec)[:60]
        return self.directory / f"{safe}-{h.hexdigest()[:16]}.npz"
