"""Exact per-sample norms for a parametrised module that has no registered rule.

Given the module's recorded inputs and output gradient, the per-sample parameter
gradient is the vector-Jacobian product of the module alone, evaluated sample by
sample — vectorised with ``torch.func.vmap``, or by a plain loop when the module
does something vmap cannot trace. Parametrised parameters
(``torch.nn.utils.parametrize``) are handled through ``functional_call``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap


def _single_loss(
    module: nn.Module,
    names: list[str],
    params: tuple[Tensor, ...],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    g: Tensor,
) -> Tensor:
    out = functional_call(module, dict(zip(names, params, strict=True)), args, kwargs)
    return (out * g).sum()


def fallback_norms(
    module: nn.Module,
    names: list[str],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    grad_output: Tensor,
) -> dict[str, Tensor]:
    """Per-sample ‖∂J/∂θ‖² for ``module``'s parameters ``names`` (relative to the module).

    args: the recorded positional inputs (tensors batch first [B, ...]); kwargs are passed
    unchanged to every sample. grad_output: [B, ...]. Returns {name: [B]}.
    """
    params = tuple(module.get_parameter(n).detach() for n in names)
    batched = tuple(0 if isinstance(a, Tensor) and a.dim() > 0 else None for a in args)

    def per_sample(p: tuple[Tensor, ...], a: tuple[Any, ...], g: Tensor) -> tuple[Tensor, ...]:
        one = tuple(x.unsqueeze(0) if d == 0 else x for x, d in zip(a, batched, strict=True))
        return grad(_single_loss, argnums=2)(module, names, p, one, kwargs, g.unsqueeze(0))

    try:
        grads = vmap(per_sample, in_dims=(None, batched, 0))(params, args, grad_output)
    except (RuntimeError, NotImplementedError):
        # Some modules (data-dependent control flow, .item()) cannot be vmapped: loop.
        grads = _loop(module, names, params, args, batched, kwargs, grad_output)
    return {
        n: gr.reshape(gr.shape[0], -1).pow(2).sum(1) for n, gr in zip(names, grads, strict=True)
    }


def _loop(
    module: nn.Module,
    names: list[str],
    params: tuple[Tensor, ...],
    args: tuple[Any, ...],
    batched: tuple[int | None, ...],
    kwargs: dict[str, Any],
    grad_output: Tensor,
) -> tuple[Tensor, ...]:
    rows: list[tuple[Tensor, ...]] = []
    leaves = tuple(p.clone().requires_grad_(True) for p in params)
    for i in range(grad_output.shape[0]):
        one = tuple(x[i : i + 1] if d == 0 else x for x, d in zip(args, batched, strict=True))
        with torch.enable_grad():
            loss = _single_loss(module, names, leaves, one, kwargs, grad_output[i : i + 1])
            rows.append(
                torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)
            )
    return tuple(torch.stack(col) for col in zip(*rows, strict=True))
