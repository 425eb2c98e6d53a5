"""nn.Conv1d / nn.Conv2d: unfold the input into patches, then the cheaper exact outer norm."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detectors.probe.registry import register_rule
from detectors.probe.rules._outer import outer_sum_sq_norm, sq_norm


def _patches(conv: nn.Conv1d | nn.Conv2d, x: Tensor) -> Tensor:
    """Input [B, C_in, (H,) W] -> patches [B, C_in·k, T] matching the conv's output positions."""
    if conv.padding_mode == "zeros":
        x = F.pad(x, conv._reversed_padding_repeated_twice)
    else:
        x = F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
    if isinstance(conv, nn.Conv1d):  # treat as a 1×W image
        return F.unfold(
            x.unsqueeze(2),
            kernel_size=(1, conv.kernel_size[0]),
            dilation=(1, conv.dilation[0]),
            stride=(1, conv.stride[0]),
        )
    return F.unfold(x, kernel_size=conv.kernel_size, dilation=conv.dilation, stride=conv.stride)


@register_rule(nn.Conv1d, nn.Conv2d)
def conv_norms(
    module: nn.Module, inputs: tuple[Tensor, ...], grad_output: Tensor
) -> dict[str, Tensor]:
    """inputs[0]: [B, C_in, (H,) W]; grad_output: [B, C_out, (H',) W']."""
    x, g = inputs[0], grad_output
    if x.dim() != module.weight.dim():  # unbatched conv input
        raise ValueError(
            f"{type(module).__name__} received an unbatched input of shape {tuple(x.shape)}"
        )
    b, groups = x.shape[0], module.groups
    a = _patches(module, x)  # [B, C_in·k, T]
    t = a.shape[-1]
    g = g.reshape(b, g.shape[1], -1)  # [B, C_out, T]
    # Per group: a_g [B·G, T, d], g_g [B·G, T, p]; the weight block of group j sees only them.
    a_g = a.reshape(b * groups, a.shape[1] // groups, t).transpose(1, 2)
    g_g = g.reshape(b * groups, g.shape[1] // groups, t).transpose(1, 2)
    norms = {"weight": outer_sum_sq_norm(a_g, g_g).reshape(b, groups).sum(1)}
    if module.bias is not None:
        norms["bias"] = sq_norm(g.sum(2))
    return norms
