"""nn.Conv1d / nn.Conv2d: per-sample weight norms by the cheaper exact route.

Materialising per-sample weight gradients costs ~T·d·p per sample (T output positions,
d = C_in/G·k, p = C_out/G); the ghost form ⟨a aᵀ, g gᵀ⟩ on unfolded patches costs
~T²·(d+p). Early layers (many positions, few channels) materialise, late layers use
the ghost form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detectors.probe.registry import register_rule
from detectors.probe.rules._outer import outer_sum_sq_norm, sq_norm


def _explicit_padding(conv: nn.Conv1d | nn.Conv2d, x: Tensor) -> Tensor:
    """Apply the conv's padding (any mode, numeric or 'same') to x [B, C, (H,) W]."""
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    return F.pad(x, conv._reversed_padding_repeated_twice, mode=mode)


def _zero_padding(conv: nn.Conv1d | nn.Conv2d) -> tuple[int, ...] | None:
    """The conv's padding when kernels can apply it themselves (zeros, numeric, symmetric);
    None when it must be applied to the input first (other modes, 'same'/'valid')."""
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return None
    return tuple(conv.padding)


def _patches(conv: nn.Conv1d | nn.Conv2d, x: Tensor) -> Tensor:
    """Input [B, C_in, (H,) W] -> patches [B, C_in·k, T] matching the conv's output positions."""
    padding = _zero_padding(conv)
    if padding is None:  # pad here (a copy); unfold then pads nothing
        x, padding = _explicit_padding(conv, x), (0,) * (x.dim() - 2)
    if isinstance(conv, nn.Conv1d):  # treat as a 1×W image
        return F.unfold(
            x.unsqueeze(2),
            kernel_size=(1, conv.kernel_size[0]),
            dilation=(1, conv.dilation[0]),
            padding=(0, padding[0]),
            stride=(1, conv.stride[0]),
        )
    return F.unfold(
        x,
        kernel_size=conv.kernel_size,
        dilation=conv.dilation,
        padding=padding,
        stride=conv.stride,
    )


def _per_sample_weight_grad(conv: nn.Conv1d | nn.Conv2d, x: Tensor, g: Tensor) -> Tensor:
    """Per-sample weight gradients [B, C_out, C_in/G, *k] from one grouped weight-gradient
    kernel: the batch is folded into channel groups, so the backend's convolution
    kernels do the work (several times faster than unfold + bmm on large layers)."""
    b, spatial = x.shape[0], x.dim() - 2
    padding = _zero_padding(conv)
    if padding is None:
        x, padding = _explicit_padding(conv, x), (0,) * spatial
    weight = conv.weight
    # Only the weight gradient is asked for, so the kernel reads the weight's shape, never
    # its values: an uninitialised tensor saves copying the weight B times.
    folded = weight.new_empty((b * weight.shape[0], *weight.shape[1:]))
    grad_w = torch.ops.aten.convolution_backward(
        g.reshape(1, -1, *g.shape[2:]),
        x.reshape(1, -1, *x.shape[2:]),
        folded,
        None,
        conv.stride,
        padding,
        conv.dilation,
        False,
        (0,) * spatial,
        b * conv.groups,
        [False, True, False],
    )[1]
    return grad_w.reshape(b, *weight.shape)


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
    t = g[0, 0].numel()
    d, p = module.weight[0].numel(), module.out_channels // groups
    if t * t * (d + p) < t * d * p:
        a = _patches(module, x)  # [B, C_in·k, T]
        # Per group: a_g [B·G, T, d], g_g [B·G, T, p]; weight block j sees only them.
        a_g = a.reshape(b * groups, d, t).transpose(1, 2)
        g_g = g.reshape(b * groups, p, t).transpose(1, 2)
        weight = outer_sum_sq_norm(a_g, g_g).reshape(b, groups).sum(1)
    else:
        weight = sq_norm(_per_sample_weight_grad(module, x, g))
    norms = {"weight": weight}
    if module.bias is not None:
        norms["bias"] = sq_norm(g.reshape(b, g.shape[1], -1).sum(2))
    return norms
