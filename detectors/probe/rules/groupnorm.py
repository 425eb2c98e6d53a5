"""nn.GroupNorm: per-channel ∇γ_i = Σ_spatial g·x̂, ∇β_i = Σ_spatial g, x̂ normalised per group."""

from __future__ import annotations

from torch import Tensor, nn

from detectors.probe.registry import register_rule
from detectors.probe.rules._outer import sq_norm


@register_rule(nn.GroupNorm)
def groupnorm_norms(
    module: nn.Module, inputs: tuple[Tensor, ...], grad_output: Tensor
) -> dict[str, Tensor]:
    """inputs[0], grad_output: [B, C, *spatial]."""
    x, g = inputs[0], grad_output
    b, c = x.shape[0], x.shape[1]
    grouped = x.reshape(b, module.num_groups, -1)
    mean = grouped.mean(dim=2, keepdim=True)
    var = grouped.var(dim=2, unbiased=False, keepdim=True)
    x_hat = ((grouped - mean) * (var + module.eps).rsqrt()).reshape(b, c, -1)
    g = g.reshape(b, c, -1)
    norms: dict[str, Tensor] = {}
    if module.weight is not None:
        norms["weight"] = sq_norm((g * x_hat).sum(2))
    if module.bias is not None:
        norms["bias"] = sq_norm(g.sum(2))
    return norms
