"""nn.LayerNorm: ∇γ_i = Σ_lead g·x̂, ∇β_i = Σ_lead g over the dims not normalised."""

from __future__ import annotations

from torch import Tensor, nn

from detectors.probe.registry import register_rule
from detectors.probe.rules._outer import sq_norm


@register_rule(nn.LayerNorm)
def layernorm_norms(
    module: nn.Module, inputs: tuple[Tensor, ...], grad_output: Tensor
) -> dict[str, Tensor]:
    """inputs[0], grad_output: [B, ..., *normalized_shape]."""
    x, g = inputs[0], grad_output
    dims = tuple(range(-len(module.normalized_shape), 0))
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, unbiased=False, keepdim=True)
    x_hat = (x - mean) * (var + module.eps).rsqrt()
    b, n = x.shape[0], module.weight.numel() if module.weight is not None else x[0].numel()
    norms: dict[str, Tensor] = {}
    if module.weight is not None:
        norms["weight"] = sq_norm((g * x_hat).reshape(b, -1, n).sum(1))
    if module.bias is not None:
        norms["bias"] = sq_norm(g.reshape(b, -1, n).sum(1))
    return norms
