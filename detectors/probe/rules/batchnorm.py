"""nn.BatchNorm1d/2d in eval mode: ∇γ_i = Σ_t g·x̂, ∇β_i = Σ_t g, x̂ from running statistics."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detectors.probe.registry import ProbeError, register_rule
from detectors.probe.rules._outer import sq_norm


@register_rule(nn.BatchNorm1d, nn.BatchNorm2d)
def batchnorm_norms(
    module: nn.Module, inputs: tuple[Tensor, ...], grad_output: Tensor
) -> dict[str, Tensor]:
    """inputs[0], grad_output: [B, C] or [B, C, L] or [B, C, H, W]."""
    if module.training or module.running_mean is None:
        # Batch statistics couple the samples of a batch: no per-sample gradient exists.
        raise ProbeError(
            f"{type(module).__name__} uses batch statistics (training mode or no running stats); "
            "per-sample features need eval mode with running statistics — call model.eval()"
        )
    x, g = inputs[0], grad_output
    b, c = x.shape[0], x.shape[1]
    g = g.reshape(b, c, -1)
    g_sum = g.sum(2)  # [B, C]
    norms: dict[str, Tensor] = {}
    if module.weight is not None:
        # Σ_t g·x̂ = (Σ_t g·x − μ·Σ_t g) / √(var + ε): a batched dot product reads g and x
        # once and writes nothing the size of the activations (x̂ would be one more pass
        # and one more copy of them).
        gx = torch.einsum("bct,bct->bc", g, x.reshape(b, c, -1))
        # Running statistics in the sums' dtype (float32 for a half model's fp32 sums).
        rstd = (module.running_var.to(gx.dtype) + module.eps).rsqrt()
        norms["weight"] = sq_norm((gx - module.running_mean.to(gx.dtype) * g_sum) * rstd)
    if module.bias is not None:
        norms["bias"] = sq_norm(g_sum)
    return norms
