"""TorchScript modules (``torch.jit.save`` of a scripted or traced model) via an eager twin.

The gradient probe computes exact per-sample norms from Python forward hooks, and
TorchScript modules do not run Python hooks. Two ways keep the features exact: a per-sample
loop (one backward per input on the scripted module) or a conversion. We convert: the user
names the eager factory that builds the same architecture, the scripted module's parameters
and buffers are copied into it (key sets and shapes must match), and the twin is accepted
only if its logits equal the scripted module's to ``tolerance`` (default 1e-5) on sample
inputs drawn from the input spec — otherwise loading is refused with the largest difference.
The twin then holds the very same tensors, so its features are those of the eager model and
it gets the batched fast path; the loop would cost B backward passes per batch instead. The
price is paid once at load time — for the demo CNN on one CPU thread about 11 ms against
3.5 ms for an eager state-dict load (``test_conversion_cost_at_load_time`` prints it) — plus
a factory the user must name. Without a factory loading is refused with a
message saying why and what to pass.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from detectors.models import ModelLoadError
from service.models.common import (
    build_eager,
    finish,
    largest_difference,
    logits_of,
    merge_labels,
    sample_inputs,
)
from service.models.registry import LoadedModel, register_loader
from service.spec import InputSpec

DEFAULT_TOLERANCE = 1e-5

NEEDS_FACTORY = (
    "TorchScript modules do not run Python forward hooks, which the gradient probe needs for "
    "exact per-sample features; pass factory='package.module:callable' building the same "
    "architecture in eager PyTorch — the scripted weights are copied into it and its logits "
    "checked against the scripted module's"
)


def jit_load(path: str | Path) -> torch.jit.ScriptModule:
    """``torch.jit.load`` on CPU (TorchScript code only, no arbitrary unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"TorchScript file not found: {path}")
    try:
        with warnings.catch_warnings():
            # Deprecated upstream in favour of torch.export, yet it is how these files load.
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # torch raises RuntimeError and others for corrupt archives
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot load TorchScript module {path}: {first}") from None


def copy_into_eager(
    scripted: nn.Module,
    eager: nn.Module,
    spec: InputSpec | None,
    tolerance: float,
    what: str,
) -> nn.Module:
    """Copy ``scripted``'s state into ``eager`` and check both give the same logits.

    Raises ModelLoadError naming missing/unexpected keys, mismatched shapes, or the largest
    logit difference on ``sample_inputs(spec)`` when it exceeds ``tolerance``.
    """
    if spec is None:
        raise ModelLoadError(
            f"{what}: an input spec (shape, dtype, range) is needed to check the eager twin "
            "against the TorchScript module on sample inputs"
        )
    source = scripted.state_dict()
    target = eager.state_dict()
    missing = [k for k in target if k not in source]
    unexpected = [k for k in source if k not in target]
    if missing or unexpected:
        raise ModelLoadError(
            f"{what}: the eager model's state does not match the TorchScript module's "
            f"(missing in the TorchScript module: {missing[:5]}, not in the eager model: "
            f"{unexpected[:5]}); the factory builds another architecture"
        )
    shapes = [
        f"{k}: {list(source[k].shape)} vs {list(target[k].shape)}"
        for k in target
        if source[k].shape != target[k].shape
    ]
    if shapes:
        raise ModelLoadError(
            f"{what}: tensor shapes differ between the TorchScript module and the eager model "
            f"({'; '.join(shapes[:5])})"
        )
    eager.load_state_dict(source)
    eager.eval()
    scripted.eval()
    x = sample_inputs(spec)
    reference = logits_of(scripted, x, f"the TorchScript module of {what}")
    twin = logits_of(eager, x, f"the eager twin of {what}")
    diff = largest_difference(reference, twin)
    if not diff <= tolerance:
        raise ModelLoadError(
            f"{what}: the eager twin's logits differ from the TorchScript module's by up to "
            f"{diff:.3g} (> {tolerance:g}) on {len(x)} sample inputs; the factory's forward is "
            "not the scripted model's"
        )
    return eager


@register_loader("torchscript")
def load_torchscript(
    *,
    path: str | Path,
    factory: str | None = None,
    spec: InputSpec | None = None,
    device: str | torch.device = "cpu",
    tolerance: float = DEFAULT_TOLERANCE,
) -> LoadedModel:
    """A ``torch.jit.save`` file as an eager twin built by ``factory`` (see module doc).

    ``spec`` is required (its shape drives the sample inputs); labels come from it.
    """
    if factory is None:
        raise ModelLoadError(f"cannot use TorchScript module {path} as is: {NEEDS_FACTORY}")
    scripted = jit_load(path)
    eager = build_eager(factory)
    spec, labels = merge_labels(spec, None, "the spec")
    what = f"TorchScript {Path(path).name} with factory {factory}"
    model = copy_into_eager(scripted, eager, spec, tolerance, what)
    return finish(model, spec, labels, f"torchscript:{path} (eager twin {factory})", device, what)
