"""Convolutions (nn.Conv1d / nn.Conv2d, and F.conv1d / F.conv2d called with a probed weight):
per-sample weight norms by the cheaper exact route.

Materialising per-sample weight gradients costs ~T·d·p per sample (T output positions,
d = C_in/G·k, p = C_out/G); the ghost form ⟨a aᵀ, g gᵀ⟩ on unfolded patches costs
~T²·(d+p). Early layers (many positions, few channels) materialise, late layers use
the ghost form.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detectors.probe.registry import register_functional, register_rule
from detectors.probe.rules._outer import outer_sum_sq_norm, sq_norm


@dataclass(frozen=True)
class ConvGeometry:
    """A convolution's hyper-parameters with zero padding the kernels apply themselves."""

    weight_shape: tuple[int, ...]  # [C_out, C_in/G, *k]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int


def _tuple(v: int | Sequence[int], n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, Sequence) else (int(v),) * n


def _module_geometry(conv: nn.Conv1d | nn.Conv2d, x: Tensor) -> tuple[Tensor, ConvGeometry]:
    """x padded where the kernels cannot pad (other modes, 'same'/'valid'), and the geometry."""
    n = conv.weight.dim() - 2
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        x, padding = F.pad(x, conv._reversed_padding_repeated_twice, mode=mode), (0,) * n
    else:
        padding = tuple(conv.padding)
    geo = ConvGeometry(
        tuple(conv.weight.shape), tuple(conv.stride), padding, tuple(conv.dilation), conv.groups
    )
    return x, geo


def _functional_geometry(
    x: Tensor, weight: Tensor, stride: Any, padding: Any, dilation: Any, groups: int
) -> tuple[Tensor, ConvGeometry]:
    n = weight.dim() - 2
    dilation_t = _tuple(dilation, n)
    if isinstance(padding, str):
        pads: list[int] = []
        if padding == "same":  # total (k-1)·dilation per dim, the extra one on the right
            for k, d in zip(reversed(weight.shape[2:]), reversed(dilation_t), strict=True):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
        padding_t = (0,) * n
    else:
        padding_t = _tuple(padding, n)
    geo = ConvGeometry(tuple(weight.shape), _tuple(stride, n), padding_t, dilation_t, int(groups))
    return x, geo


def _patches(geo: ConvGeometry, x: Tensor) -> Tensor:
    """Input [B, C_in, (H,) W] -> patches [B, C_in·k, T] matching the conv's output positions."""
    if len(geo.weight_shape) == 3:  # Conv1d: treat as a 1×W image
        return F.unfold(
            x.unsqueeze(2),
            kernel_size=(1, geo.weight_shape[2]),
            dilation=(1, geo.dilation[0]),
            padding=(0, geo.padding[0]),
            stride=(1, geo.stride[0]),
        )
    return F.unfold(
        x,
        kernel_size=geo.weight_shape[2:],
        dilation=geo.dilation,
        padding=geo.padding,
        stride=geo.stride,
    )


def _per_sample_weight_grad(geo: ConvGeometry, x: Tensor, g: Tensor) -> Tensor:
    """Per-sample weight gradients [B, C_out, C_in/G, *k] from one grouped weight-gradient
    kernel: the batch is folded into channel groups, so the backend's convolution
    kernels do the work (several times faster than unfold + bmm on large layers)."""
    b, spatial = x.shape[0], x.dim() - 2
    # Only the weight gradient is asked for, so the kernel reads the weight's shape, never
    # its values: an uninitialised tensor saves copying the weight B times.
    folded = x.new_empty((b * geo.weight_shape[0], *geo.weight_shape[1:]))
    grad_w = torch.ops.aten.convolution_backward(
        g.reshape(1, -1, *g.shape[2:]),
        x.reshape(1, -1, *x.shape[2:]),
        folded,
        None,
        geo.stride,
        geo.padding,
        geo.dilation,
        False,
        (0,) * spatial,
        b * geo.groups,
        [False, True, False],
    )[1]
    return grad_w.reshape(b, *geo.weight_shape)


def _depthwise_weight_grad(geo: ConvGeometry, x: Tensor, g: Tensor) -> Tensor:
    """Per-sample weight gradients [B, C, 1, *k] of a depthwise conv (one input channel per
    group): ∇w[b, c, i] = Σ_t g[b, c, t]·x[b, c, t·stride + i·dilation] is a forward
    depthwise convolution of x with g as the kernel (stride and dilation swapped), over
    B·C groups. The backend's weight-gradient kernel for B·C groups is 5–15× slower on
    EfficientNet's 5×5 depthwise layers; this is one small forward convolution."""
    b, c = x.shape[0], x.shape[1]
    conv = F.conv1d if x.dim() == 3 else F.conv2d
    out = conv(
        x.reshape(1, b * c, *x.shape[2:]),
        g.reshape(b * c, 1, *g.shape[2:]),
        None,
        geo.dilation,
        geo.padding,
        geo.stride,
        b * c,
    )  # [1, B·C, ≥k...]: positions past the kernel are offsets the conv never used
    k = geo.weight_shape[2:]
    out = out[..., : k[0]] if len(k) == 1 else out[..., : k[0], : k[1]]
    return out.reshape(b, c, 1, *k)


def conv_weight_norms(geo: ConvGeometry, x: Tensor, g: Tensor) -> Tensor:
    """x: [B, C_in, (H,) W] (padding applied where ``geo`` says none); g: [B, C_out, ...].
    Returns the per-sample squared weight-gradient norms [B]."""
    if x.dim() != len(geo.weight_shape):  # unbatched conv input
        raise ValueError(f"convolution received an unbatched input of shape {tuple(x.shape)}")
    b, groups = x.shape[0], geo.groups
    t = g[0, 0].numel()
    d = 1
    for s in geo.weight_shape[1:]:
        d *= s
    p = geo.weight_shape[0] // groups
    if t * t * (d + p) < t * d * p:
        a = _patches(geo, x)  # [B, C_in·k, T]
        # Per group: a_g [B·G, T, d], g_g [B·G, T, p]; weight block j sees only them.
        a_g = a.reshape(b * groups, d, t).transpose(1, 2)
        g_g = g.reshape(b * groups, p, t).transpose(1, 2)
        return outer_sum_sq_norm(a_g, g_g).reshape(b, groups).sum(1)
    if geo.weight_shape[1] == 1 and groups == x.shape[1] and groups == geo.weight_shape[0]:
        return sq_norm(_depthwise_weight_grad(geo, x, g))
    return sq_norm(_per_sample_weight_grad(geo, x, g))


def bias_norms(g: Tensor) -> Tensor:
    """g: [B, C, ...] -> ‖Σ_positions g‖² per sample [B]."""
    return sq_norm(g.reshape(g.shape[0], g.shape[1], -1).sum(2))


@register_rule(nn.Conv1d, nn.Conv2d)
def conv_norms(
    module: nn.Module, inputs: tuple[Tensor, ...], grad_output: Tensor
) -> dict[str, Tensor]:
    """inputs[0]: [B, C_in, (H,) W]; grad_output: [B, C_out, (H',) W']."""
    x, geo = _module_geometry(module, inputs[0])
    norms = {"weight": conv_weight_norms(geo, x, grad_output)}
    if module.bias is not None:
        norms["bias"] = bias_norms(grad_output)
    return norms


def _bind_conv(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
) -> dict[str, Any]:
    return {
        "input": input,
        "weight": weight,
        "bias": bias,
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "groups": groups,
    }


@register_functional(F.conv1d, F.conv2d, bind=_bind_conv)
def conv_functional_norms(call: dict[str, Any], grad_output: Tensor) -> dict[str, Tensor]:
    """``F.conv{1,2}d`` inside a module with no rule (e.g. a 'same'-padding Conv2d subclass)."""
    x, geo = _functional_geometry(
        call["input"],
        call["weight"],
        call["stride"],
        call["padding"],
        call["dilation"],
        call["groups"],
    )
    norms = {"weight": conv_weight_norms(geo, x, grad_output)}
    if call["bias"] is not None:
        norms["bias"] = bias_norms(grad_output)
    return norms
