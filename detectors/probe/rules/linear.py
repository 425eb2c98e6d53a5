"""nn.Linear and F.linear: ‖∇W_i‖² = ‖g_i‖²·‖a_i‖² for 2-D input; over a sequence
([B, ..., d_in], e.g. tokens or channels-last feature maps) ghost or materialised,
whichever is cheaper."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from detectors.probe.registry import register_functional, register_rule
from detectors.probe.rules._outer import outer_sum_sq_norm, sq_norm


def linear_norms_of(a: Tensor, g: Tensor, has_bias: bool) -> dict[str, Tensor]:
    """a: [B, ..., d_in]; g: [B, ..., d_out] -> {"weight": [B], "bias": [B] if has_bias}."""
    if a.dim() == 1:  # unbatched input has no per-sample meaning
        raise ValueError("Linear received a 1-D input; the probe needs a batch dimension")
    norms: dict[str, Tensor] = {}
    if a.dim() == 2:
        norms["weight"] = g.pow(2).sum(1) * a.pow(2).sum(1)
    else:
        b = a.shape[0]
        norms["weight"] = outer_sum_sq_norm(
            a.reshape(b, -1, a.shape[-1]), g.reshape(b, -1, g.shape[-1])
        )
    if has_bias:
        norms["bias"] = sq_norm(g.reshape(g.shape[0], -1, g.shape[-1]).sum(1))
    return norms


@register_rule(nn.Linear)
def linear_norms(
    module: nn.Module, inputs: tuple[Tensor, ...], grad_output: Tensor
) -> dict[str, Tensor]:
    """inputs[0]: [B, ..., d_in]; grad_output: [B, ..., d_out]."""
    return linear_norms_of(inputs[0], grad_output, module.bias is not None)


def _bind_linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> dict[str, Any]:
    return {"input": input, "weight": weight, "bias": bias}


@register_functional(F.linear, bind=_bind_linear)
def linear_functional_norms(call: dict[str, Any], grad_output: Tensor) -> dict[str, Tensor]:
    """``F.linear`` inside a module with no rule."""
    return linear_norms_of(call["input"], grad_output, call["bias"] is not None)
