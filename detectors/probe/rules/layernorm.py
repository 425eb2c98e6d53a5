"""nn.LayerNorm and F.layer_norm: ∇γ_i = Σ_lead g·x̂, ∇β_i = Σ_lead g over the dims not
normalised (tokens, or the positions of a channels-last feature map)."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from detectors.probe.registry import register_functional, register_rule
from detectors.probe.rules._outer import sq_norm


def layer_norm_norms_of(
    x: Tensor, g: Tensor, n_dims: int, eps: float, has_weight: bool, has_bias: bool
) -> dict[str, Tensor]:
    """x, g: [B, ..., *normalized_shape] with ``n_dims`` normalised trailing dims."""
    dims = tuple(range(-n_dims, 0))
    b, n = x.shape[0], 1
    for s in x.shape[x.dim() - n_dims :]:
        n *= s
    norms: dict[str, Tensor] = {}
    if has_weight:
        mean = x.mean(dim=dims, keepdim=True)
        var = x.var(dim=dims, unbiased=False, keepdim=True)
        x_hat = (x - mean) * (var + eps).rsqrt()
        norms["weight"] = sq_norm((g * x_hat).reshape(b, -1, n).sum(1))
    if has_bias:
        norms["bias"] = sq_norm(g.reshape(b, -1, n).sum(1))
    return norms


@register_rule(nn.LayerNorm)
def layernorm_norms(
    module: nn.Module, inputs: tuple[Tensor, ...], grad_output: Tensor
) -> dict[str, Tensor]:
    """inputs[0], grad_output: [B, ..., *normalized_shape]."""
    return layer_norm_norms_of(
        inputs[0],
        grad_output,
        len(module.normalized_shape),
        module.eps,
        module.weight is not None,
        module.bias is not None,
    )


def _bind_layer_norm(
    input: Tensor,
    normalized_shape: Any,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> dict[str, Any]:
    return {
        "input": input,
        "normalized_shape": normalized_shape,
        "weight": weight,
        "bias": bias,
        "eps": eps,
    }


@register_functional(F.layer_norm, bind=_bind_layer_norm)
def layer_norm_functional_norms(call: dict[str, Any], grad_output: Tensor) -> dict[str, Tensor]:
    """``F.layer_norm`` inside a module with no rule (e.g. a channels-first LayerNorm subclass
    that permutes around ``super().forward``)."""
    shape = call["normalized_shape"]
    n_dims = 1 if isinstance(shape, int) else len(shape)
    return layer_norm_norms_of(
        call["input"],
        grad_output,
        n_dims,
        call["eps"],
        call["weight"] is not None,
        call["bias"] is not None,
    )
