"""nn.BatchNorm1d/2d in eval mode: ∇γ_i = Σ_t g·x̂, ∇β_i = Σ_t g, x̂ from running statistics."""

from __future__ import annotations

import torch.nn.functional as F
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
    # x̂ = (x - mean) / sqrt(var + eps) from the running statistics, in one fused kernel.
    x_hat = F.batch_norm(
        x, module.running_mean, module.running_var, None, None, False, 0.0, module.eps
    )
    g = g.reshape(b, c, -1)
    norms: dict[str, Tensor] = {}
    if module.weight is not None:
        norms["weight"] = sq_norm((g * x_hat.reshape(b, c, -1)).sum(2))
    if module.bias is not None:
        norms["bias"] = sq_norm(g.sum(2))
    return norms
