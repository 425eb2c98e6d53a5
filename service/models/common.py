"""What every loader shares: sample inputs, logit comparison, class labels, final checks."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor, nn

from detectors.models import ModelLoadError, load_eager_model
from service.models.registry import LoadedModel
from service.spec import InputSpec


def build_eager(factory: str, weights: str | Path | None = None) -> nn.Module:
    """``load_eager_model`` on CPU, with any failure of the factory itself (user code)
    reported as a ModelLoadError too."""
    try:
        return load_eager_model(factory, weights, "cpu")
    except ModelLoadError:
        raise
    except Exception as exc:  # the factory's own code failed
        raise ModelLoadError(
            f"model factory {factory!r} failed: {type(exc).__name__}: {_first_line(exc)}"
        ) from None


def sample_inputs(spec: InputSpec, count: int = 8, seed: int = 0) -> Tensor:
    """Inputs to compare two implementations of one model on.

    Returns ``[count + 2, *spec.shape]`` in ``spec.dtype``: ``count`` seeded uniform draws in
    ``spec.value_range`` plus the two constant images at its ends, normalised by the spec's
    mean/std as the service does before calling the model.
    """
    lo, hi = spec.value_range
    generator = torch.Generator().manual_seed(seed)
    dtype = getattr(torch, spec.dtype)
    x = torch.rand((count, *spec.shape), generator=generator, dtype=torch.float64)
    x = torch.cat([x, torch.zeros(1, *spec.shape), torch.ones(1, *spec.shape)]) * (hi - lo) + lo
    if spec.mean:
        mean = torch.tensor(spec.mean, dtype=torch.float64).view(-1, 1, 1)
        std = torch.tensor(spec.std, dtype=torch.float64).view(-1, 1, 1)
        x = (x - mean) / std
    return x.to(dtype)


def largest_difference(a: Tensor, b: Tensor) -> float:
    """max |a - b| over all elements (inf when either holds NaN/inf or the shapes differ)."""
    if a.shape != b.shape:
        return math.inf
    diff = (a.detach().double() - b.detach().double()).abs()
    return float(diff.max()) if bool(torch.isfinite(diff).all()) else math.inf


def logits_of(model: nn.Module, x: Tensor, what: str) -> Tensor:
    """``model(x)`` without autograd, checked to be logits ``[B, C]``."""
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # any failure of user model code on a spec-shaped input
        raise ModelLoadError(
            f"{what} fails on inputs of shape {list(x.shape)}: {_first_line(exc)}"
        ) from None
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
        got = f"shape {list(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
        raise ModelLoadError(f"{what} must return logits [B, C] for [B, ...] inputs; got {got}")
    return out


def parse_index_to_name(data: bytes, where: str) -> list[str]:
    """Labels from TorchServe's ``index_to_name.json``: ``{"0": "cat", "1": "dog"}``.

    ImageNet-style values ``["n01440764", "tench"]`` give their last entry (the readable
    name). Keys must be exactly 0 .. C-1.
    """
    try:
        mapping = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(mapping, dict) or not mapping:
        raise ModelLoadError(f"{where} must be a non-empty JSON object index -> name")
    try:
        indices = sorted(int(k) for k in mapping)
    except ValueError:
        raise ModelLoadError(
            f"{where}: keys must be class indices, got {list(mapping)[:5]}"
        ) from None
    if indices != list(range(len(mapping))):
        raise ModelLoadError(f"{where}: keys must be 0 .. {len(mapping) - 1} without gaps")
    labels: list[str] = []
    for index in range(len(mapping)):
        value = mapping.get(str(index))
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            value = value[-1]
        if not isinstance(value, str):
            raise ModelLoadError(
                f"{where}: class {index} must map to a name or a list of names, got {value!r}"
            )
        labels.append(value)
    return labels


def merge_labels(
    spec: InputSpec | None, labels: list[str] | None, where: str
) -> tuple[InputSpec | None, list[str] | None]:
    """The class labels to serve and the spec carrying them: the spec's own labels when it
    has any (the caller's configuration wins), else ``labels`` from the artifact at
    ``where``. Their count is checked against the model's logits by ``finish``."""
    if spec is not None and spec.labels:
        return spec, list(spec.labels)
    if labels is None or spec is None:
        return spec, labels
    return replace(spec, labels=tuple(labels)), labels


def finish(
    model: nn.Module,
    spec: InputSpec | None,
    labels: list[str] | None,
    source: str,
    device: str | torch.device,
    what: str,
) -> LoadedModel:
    """Eval mode on ``device``; with a spec, one sample batch must give logits with as many
    classes as there are labels."""
    model.eval()
    if spec is not None:
        logits = logits_of(model, sample_inputs(spec, count=2), what)
        if labels is not None and logits.shape[1] != len(labels):
            raise ModelLoadError(
                f"{what} returns {logits.shape[1]} logits but {len(labels)} labels are given"
            )
    try:
        model = model.to(device)
    except (RuntimeError, AssertionError) as exc:  # e.g. CUDA requested but absent
        raise ModelLoadError(f"cannot move {what} to {device}: {_first_line(exc)}") from None
    return LoadedModel(model=model, spec=spec, labels=labels, source=source)


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
