"""The baseline contract and the input checks every baseline shares.

A baseline turns a classifier and a batch of images into one score per image,
"higher = more likely challenging". Baselines never change the model's mode and
never write ``.grad`` on its parameters (gradients, where needed, are taken with
``torch.autograd.grad`` with respect to inputs only).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from numbers import Real
from typing import ClassVar, Self

import numpy as np
import torch
from torch import nn


class Baseline:
    """A scoring rule on a classifier's outputs or activations.

    Subclasses set ``name`` (through the registry's ``register``) and implement
    ``score_batch`` (a score per batch) or ``score_images`` (the whole array); they check
    their settings in ``check_params``; those that learn statistics from clean data also
    override ``fit``. ``score`` does the shared input checks.
    """

    name: ClassVar[str] = ""
    #: True when ``score`` needs ``fit`` on clean labelled data first (feature-space scores).
    needs_fit: ClassVar[bool] = False

    def fit(
        self,
        model: nn.Module,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        batch_size: int = 256,
    ) -> Self:
        """Learn from clean in-distribution data; a no-op unless overridden.

        Args:
            model: classifier in eval mode, float [B, C, H, W] in [0, 1] -> logits [B, K].
            images: float32 [N, C, H, W] in [0, 1].
            labels: int64 [N], true classes.
        """
        check_model(model)
        check_images(images)
        check_labels(labels, len(images))
        check_batch_size(batch_size)
        return self

    def score(self, model: nn.Module, images: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
        """Score images; higher = more likely adversarial / OOD / corrupted.

        Checks the baseline's own settings (``check_params``), the model, the images and the
        batch size, then scores with ``score_images``.

        Args:
            model: classifier in eval mode.
            images: float32 [N, C, H, W] in [0, 1].
            batch_size: images per forward pass (results do not depend on it).

        Returns:
            float64 [N].
        """
        self.check_params()
        check_model(model)
        check_images(images)
        check_batch_size(batch_size)
        return self.score_images(model, images, batch_size)

    def check_params(self) -> None:
        """Refuse invalid settings (or an unfitted baseline) before any work; none here."""

    def score_images(self, model: nn.Module, images: np.ndarray, batch_size: int) -> np.ndarray:
        """Checked inputs -> float64 [N]: ``score_batch`` per batch, without autograd (a
        baseline that needs input gradients enables them itself)."""
        out: list[np.ndarray] = []
        with torch.no_grad():
            for x in batches(images, batch_size, model_device(model)):
                out.append(self.score_batch(model, x).double().cpu().numpy())
        return np.concatenate(out)

    def score_batch(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """x float32 [B, C, H, W] on the model's device -> scores [B]."""
        raise NotImplementedError(
            f"{type(self).__name__} implements neither score_batch nor score_images"
        )

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.endswith("_"))
        return f"{type(self).__name__}({params})"


def check_model(model: nn.Module) -> None:
    """Refuse anything but an ``nn.Module`` in eval mode (train mode would update BatchNorm
    running statistics and make dropout random)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    # Submodules too: an eval-mode wrapper around a training-mode BatchNorm still mutates.
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        raise ValueError(
            f"model is in training mode ({', '.join(training[:3])}); "
            "call model.eval() before scoring"
        )


def check_images(images: np.ndarray) -> None:
    """Images must be a non-empty, finite, floating numpy array [N, C, H, W]."""
    if not isinstance(images, np.ndarray):
        raise TypeError(f"images must be a numpy array, got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"images must have shape [N, C, H, W], got {images.shape}")
    if images.shape[0] == 0:
        raise ValueError("images is empty: need at least one image")
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images must be floating point in [0, 1], got dtype {images.dtype}")
    if not np.isfinite(images).all():
        raise ValueError("images contain NaN or infinite values")


def check_labels(labels: np.ndarray, n: int) -> None:
    """Labels must be a non-negative integer array [n]."""
    if not isinstance(labels, np.ndarray):
        raise TypeError(f"labels must be a numpy array, got {type(labels).__name__}")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match images, got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if (labels < 0).any():
        raise ValueError("labels must be non-negative class indices")


def check_batch_size(batch_size: int) -> None:
    """A positive int (bool excluded)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def check_number(value: float, what: str, *, positive: bool) -> float:
    """A finite real number, > 0 if ``positive`` else >= 0; returned as float."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{what} must be {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters (or buffers) live; CPU for a stateless model."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def batches(images: np.ndarray, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    """Yield float32 tensors [<=batch_size, C, H, W] on ``device``, in order."""
    for start in range(0, len(images), batch_size):
        chunk = np.ascontiguousarray(images[start : start + batch_size], dtype=np.float32)
        yield torch.from_numpy(chunk).to(device)


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run the model and check it returned logits [B, K]."""
    z = model(x)
    if not isinstance(z, torch.Tensor) or z.ndim != 2 or z.shape[0] != x.shape[0]:
        shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise ValueError(f"model must return logits [B, num_classes]; got {shape}")
    return z


def check_width(feats: np.ndarray, fitted: int) -> None:
    """Refuse penultimate features [N, D] whose width D is not the ``fitted`` one."""
    if feats.shape[1] != fitted:
        raise ValueError(
            f"the model's penultimate features have {feats.shape[1]} dimensions, "
            f"but this baseline was fitted on {fitted}"
        )
