"""Shared machinery for attacks from the Adversarial Robustness Toolbox (ART).

The user's model is wrapped in an ART ``PyTorchClassifier`` (inputs clipped to [0, 1],
cross-entropy loss) for the duration of one ``generate`` call. The model's parameters
are frozen meanwhile, so attacks only take input gradients; afterwards every
parameter's ``requires_grad`` and ``.grad`` and every module's train/eval flag are put
back as they were.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, ClassVar

import numpy as np
import torch
from art.estimators.classification import PyTorchClassifier
from art.utils import to_categorical
from torch import nn

from detectors.challenges.errors import ChallengeError
from detectors.challenges.registry import Challenge, ChallengeContext, Kind
from detectors.challenges.seeding import seeded


class _Float32Input(nn.Module):
    """Casts inputs to float32: some ART attacks (HopSkipJump) feed float64 arrays."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.float())


@contextmanager
def untouched(model: nn.Module) -> Iterator[None]:
    """Freeze ``model``'s parameters for the block; restore flags, grads and modes after."""
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    try:
        for p, _, _ in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, requires_grad, grad in params:
            p.requires_grad_(requires_grad)
            p.grad = grad
        for m, training in modes:
            m.training = training


def _device_of(model: nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def num_classes(model: nn.Module, images: np.ndarray) -> int:
    """Number of logits ``model`` returns, from one forward pass on ``images[:1]``."""
    try:
        with torch.no_grad():
            logits = model(torch.from_numpy(images[:1]).to(_device_of(model)))
    except RuntimeError as exc:
        raise ChallengeError(
            f"the model rejected images of shape {images.shape[1:]} ([C, H, W]): {exc}"
        ) from exc
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ChallengeError(
            "the model must return logits [batch, classes]; got "
            f"{getattr(logits, 'shape', type(logits).__name__)}"
        )
    return int(logits.shape[1])


class ArtAttack(Challenge):
    """Base of ART evasion attacks: subclasses build the attack in ``_attack``."""

    kind: ClassVar[Kind] = "adversarial"

    @property
    def stochastic(self) -> bool:
        return False

    @property
    def uses_model(self) -> bool:
        return True

    @abstractmethod
    def _attack(self, classifier: PyTorchClassifier, ctx: ChallengeContext) -> Any:
        """An ART evasion attack on ``classifier`` configured from ``self.params``."""

    def _generate(self, ctx: ChallengeContext) -> np.ndarray:
        model = ctx.model
        if model is None:
            raise ChallengeError(f"{self.name} attacks a model: ChallengeContext.model is None")
        device = _device_of(model)
        with untouched(model), seeded(ctx.seed):
            model.eval()
            classes = num_classes(model, ctx.images)
            if ctx.labels is not None and ctx.labels.max() >= classes:
                raise ChallengeError(
                    f"labels go up to {ctx.labels.max()} but the model has {classes} classes"
                )
            # ART places the model on the *current* CUDA device; make that the model's own.
            on_device = torch.cuda.device(device) if device.type == "cuda" else nullcontext()
            with on_device:
                classifier = PyTorchClassifier(
                    model=_Float32Input(model),
                    loss=nn.CrossEntropyLoss(),
                    input_shape=tuple(ctx.images.shape[1:]),
                    nb_classes=classes,
                    clip_values=(0.0, 1.0),
                    device_type="gpu" if device.type == "cuda" else "cpu",
                )
            y = None if ctx.labels is None else to_categorical(ctx.labels, classes)
            return self._run(self._attack(classifier, ctx), classifier, ctx, y)

    def _run(
        self,
        attack: Any,
        classifier: PyTorchClassifier,
        ctx: ChallengeContext,
        y: np.ndarray | None,
    ) -> np.ndarray:
        """Run the configured attack on ctx.images (one-hot ``y`` [N, classes] or None).

        Called with the model frozen and the global generators seeded from ctx.seed.
        """
        return attack.generate(x=ctx.images, y=y)
