"""Squeezed views of the input: how far the prediction moves when the input is restored.

A view maps an image batch x [B, C, H, W] to a restored copy of the same shape. Its
feature column is the L1 distance between the softmax of x and of the view,
``|softmax(f(x)) - softmax(f(view(x)))|_1`` in [SHIFT_FLOOR, 2] (Xu et al. 2018, "Feature
Squeezing"): a small-norm attack (CW-L2, DeepFool) sits just across a decision boundary
and a 3×3 median filter moves it back, while a clean input keeps its prediction; a
corruption that narrowed the intensity range moves when ``stretch`` restores it. Each view
costs one more forward pass and no backward.

Every view is written in torch, so the adaptive attacker differentiates through it
(``detectors.adaptive.features``) exactly as the server computes it. Add one with
``@register_view("name")``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from detectors.precision import model_input

#: The least shift a column reports. Two float32 forward passes of one input agree to ~1e-7
#: per probability, so smaller shifts are rounding, not signal; H reads the column's
#: logarithm, and an exact 0 (an input the view leaves unchanged) would otherwise become
#: log(1e-30), an outlier that drags the score of anything a view cannot move.
SHIFT_FLOOR = 1e-6

#: A flat image has no range to stretch: its span is taken as at least this.
STRETCH_MIN_SPAN = 1e-6

#: name -> view, x float [B, C, H, W] -> float [B, C, H, W]
VIEWS: dict[str, Callable[[Tensor], Tensor]] = {}


def register_view(name: str) -> Callable[[Callable[[Tensor], Tensor]], Callable[[Tensor], Tensor]]:
    """Decorator adding a view to ``VIEWS`` under ``name``."""

    def add(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
        VIEWS[name] = fn
        return fn

    return add


def check_views(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The names as a tuple; ValueError naming the unknown ones or a repeated one."""
    unknown = [n for n in names if n not in VIEWS]
    if unknown:
        raise ValueError(f"unknown view(s) {unknown}; known: {sorted(VIEWS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"views {list(names)} name one view twice")
    return tuple(names)


def _check_images(x: Tensor, view: str) -> None:
    if x.dim() != 4:
        raise ValueError(
            f"the {view} view needs image batches [B, C, H, W], got shape {tuple(x.shape)}"
        )


@register_view("median")
def median(x: Tensor) -> Tensor:
    """3×3 median filter per channel, edges replicated (scipy's ``mode="nearest"``)."""
    _check_images(x, "median")
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    patches = padded.unfold(2, 3, 1).unfold(3, 3, 1)  # [B, C, H, W, 3, 3]
    return patches.reshape(*x.shape, 9).median(dim=-1).values


@register_view("stretch")
def stretch(x: Tensor) -> Tensor:
    """Each image's intensity range stretched to [0, 1] (inputs in [0, 1], as the demos and
    the bundled EfficientNet take them): undoes a haze, a fade or a lost contrast, and
    leaves an image that already spans the range as it is."""
    _check_images(x, "stretch")
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    span = (x.amax(dim=(1, 2, 3), keepdim=True) - lo).clamp_min(STRETCH_MIN_SPAN)
    return (x - lo) / span


def shift(logits: Tensor, view_logits: Tensor) -> Tensor:
    """[B]: L1 distance between the softmax of logits [B, K] and of the view's [B, K], at
    least ``SHIFT_FLOOR``."""
    return (F.softmax(logits, 1) - F.softmax(view_logits, 1)).abs().sum(1).clamp_min(SHIFT_FLOOR)


def view_shifts(
    model: torch.nn.Module, x: Tensor, logits: Tensor, names: tuple[str, ...]
) -> Tensor:
    """[B, len(names)] float64: ``shift`` of each view; differentiable in x unless the caller
    runs it under ``torch.no_grad()``."""
    z = logits.double()
    cols = [shift(z, model(model_input(model, VIEWS[n](x))).double()) for n in names]
    return torch.stack(cols, 1) if cols else z.new_zeros((len(z), 0))
