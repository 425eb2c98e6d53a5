"""The floating-point precision a classifier runs in, and the probe's fp32 accumulation.

A model may run in float32 (the default), float16 or bfloat16 (``model_dtype``). Its
forward and backward then run in that dtype, but everything the probe sums — the
confounding loss, each layer's per-sample squared norms — is computed in float32 from
upcast activations and gradients: a squared norm of fp16 values overflows at 65,504 (one
activation of 256 already squares past it), and bf16 keeps 8 mantissa bits, so a sum of
thousands of bf16 terms would lose most of them. Features always come out float32.

A bundle records the dtype (and device) its features were fitted at
(``fitted_precision``); serving it at another warns: bf16 features differ from fp32 ones by
about 2⁻⁸ relative per op, which moves scores near the threshold.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: Names accepted for ``model_dtype``, in the order the docs list them.
MODEL_DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")
#: Dtypes the probe upcasts to float32 before summing.
HALF_DTYPES: frozenset[torch.dtype] = frozenset({torch.float16, torch.bfloat16})


class PrecisionError(ValueError):
    """An unknown model dtype name."""


def torch_dtype(name: str) -> torch.dtype:
    """ "float32" | "float16" | "bfloat16" -> the torch dtype; PrecisionError otherwise."""
    if name not in MODEL_DTYPES:
        raise PrecisionError(f"model dtype must be one of {list(MODEL_DTYPES)}, got {name!r}")
    return getattr(torch, name)


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16"."""
    return str(dtype).removeprefix("torch.")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (or buffer); float32 when it
    has none. Inputs are cast to it before the forward pass."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def model_input(model: nn.Module, x: Tensor) -> Tensor:
    """x as the model takes it: cast to a float16/bfloat16 model's dtype, else unchanged
    (a float32 model keeps its input; float64 inputs are the caller's choice)."""
    dtype = model_dtype(model)
    return x.to(dtype) if dtype in HALF_DTYPES and x.dtype != dtype else x


def cast_model(model: nn.Module, name: str) -> nn.Module:
    """Cast the model's floating parameters and buffers to ``name`` in place (the same
    Parameter objects, so hooks and probes built on it stay valid); returns the model."""
    dtype = torch_dtype(name)
    if model_dtype(model) != dtype:
        model.to(dtype)
    return model


def fitted_on(model: nn.Module) -> dict[str, str]:
    """Where the model computes: ``{"device": "cpu" | "cuda" | …, "dtype": "float32" | …}``,
    with ``"device_name"`` (the GPU's) on CUDA: the bundle manifest's ``fitted_on``."""
    param = next((t for t in model.parameters()), None)
    device = "cpu" if param is None else param.device.type
    out = {"device": device, "dtype": dtype_name(model_dtype(model))}
    if param is not None and device == "cuda":  # which GPU: kernels differ between models
        out["device_name"] = torch.cuda.get_device_name(param.device)
    return out


#: What a bundle without ``fitted_on`` was fitted at (every bundle before the field).
DEFAULT_FITTED_ON: dict[str, str] = {"device": "cpu", "dtype": "float32"}


def upcast(t: Tensor) -> Tensor:
    """A float16/bfloat16 tensor as float32 (others unchanged: float64 stays float64)."""
    return t.float() if t.dtype in HALF_DTYPES else t


def upcast_all(values: tuple, /) -> tuple:
    """``upcast`` every tensor of a tuple (other items unchanged)."""
    return tuple(upcast(v) if isinstance(v, Tensor) else v for v in values)
