"""nn.Linear: ‖∇W_i‖² = ‖g_i‖²·‖a_i‖² for 2-D input; ghost or materialised with a sequence dim."""

from __future__ import annotations

from torch import Tensor, nn

from detectors.probe.registry import register_rule
from detectors.probe.rules._outer import outer_sum_sq_norm, sq_norm


@register_rule(nn.Linear)
def linear_norms(
    module: nn.Module, inputs: tuple[Tensor, ...], grad_output: Tensor
) -> dict[str, Tensor]:
    """inputs[0]: [B, ..., d_in]; grad_output: [B, ..., d_out]."""
    a, g = inputs[0], grad_output
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
    if module.bias is not None:
        norms["bias"] = sq_norm(g.reshape(g.shape[0], -1, g.shape[-1]).sum(1))
    return norms
