"""GradientProbe: per-sample, per-parameter squared norms of a confounding gradient.

One batched forward with hooks and one batched backward per confounding loss. Each
probed layer that no other probed layer feeds (the first convolution, an Embedding fed
integer ids) has its output cut from everything before it and a zero scalar ``anchor``
added there; the backward asks only for dJ/d(anchor). So autograd walks
back from the loss through every layer down to the first probed ones (firing the hooks
that turn each probed layer's output gradient into per-sample norms at once, then free
its recorded inputs) and no further: it computes no parameter gradient, never writes
``.grad``, never holds all layer gradients at once, and never computes the gradient
with respect to the input pixels, which no feature needs (on small models that is the
costliest kernel of the whole backward). Tensor hooks registered before an in-place op
(``ReLU(inplace)``, ``out += identity``) still see the gradient of the layer's own
output.

Modules with a registered rule are hooked as modules. Parameters of modules without one
(raw parameters such as class tokens, position embeddings and layer scales; subclasses
that override ``forward``; parametrised weights) are followed op by op while the forward
runs (``detectors.probe.ops``): each op where one meets the batch is hooked like a layer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from detectors.losses import get_loss
from detectors.precision import model_input, upcast, upcast_all
from detectors.probe import rules as _rules  # noqa: F401  (registers every rule)
from detectors.probe.ops import OpTracker
from detectors.probe.registry import ProbeError, rule_for
from detectors.probe.rules._outer import sq_norm
from detectors.timing import timer_for


@dataclass
class _Unit:
    """A module owning selected parameters, and where its norms go in the feature vector."""

    name: str
    module: nn.Module
    columns: dict[str, int]  # local parameter name -> feature column
    args: tuple[Any, ...] | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    versions: tuple[int, ...] = ()


@dataclass
class ProbeOutput:
    """What one probe pass produced.

    logits: [B, C]; features: loss name -> [B, L]; captured: module name -> its first
    input [B, ...] (e.g. the penultimate activations feeding the last Linear); timings:
    seconds spent in the forward pass and in the backward passes with their norms, by the
    device's clock (CUDA events on a GPU, synchronised once per call; ``detectors.timing``).
    """

    logits: Tensor
    features: dict[str, Tensor]
    captured: dict[str, Tensor]
    timings: dict[str, float] = field(default_factory=dict)


def _owner_of(model: nn.Module) -> dict[str, tuple[str, nn.Module, str]]:
    """Parameter name -> (owning module name, module, name relative to it).

    A parametrised module (torch.nn.utils.parametrize) owns the originals stored under
    its ``parametrizations`` container: its forward is what uses them.
    """
    owners: dict[str, tuple[str, nn.Module, str]] = {}
    for mod_name, module in model.named_modules():
        if ".parametrizations." in f".{mod_name}.":
            continue
        prefix = f"{mod_name}." if mod_name else ""
        local = dict(module.named_parameters(recurse=False))
        container = getattr(module, "parametrizations", None)
        if isinstance(container, nn.ModuleDict):
            local.update({f"parametrizations.{n}": p for n, p in container.named_parameters()})
        for n in local:
            owners[prefix + n] = (mod_name, module, n)
    return owners


class GradientProbe:
    """Per-sample confounding-gradient features of a classifier.

    ``GradientProbe(model, params=None, loss="all_ones")``; ``probe.features(x)`` with x a
    float tensor [B, ...] on the model's device returns (logits [B, C], features [B, L]),
    feature l of sample i being ‖∇_{θ_l} J(x_i)‖²₂. ``feature_names`` lists the L parameter
    names in ``model.named_parameters()`` order: every trainable parameter by default, or
    exactly the names in ``params``. The model must be in eval mode (batch statistics and
    dropout would couple or randomise samples); its parameters, ``.grad`` and mode are
    left untouched.
    """

    def __init__(
        self, model: nn.Module, params: Sequence[str] | None = None, loss: str = "all_ones"
    ) -> None:
        get_loss(loss)  # fail early on an unknown name
        self.model = model
        self.loss = loss
        all_params = dict(model.named_parameters())
        if params is None:
            names = [n for n, p in all_params.items() if p.requires_grad]
        else:
            wanted = list(dict.fromkeys(params))
            unknown = [n for n in wanted if n not in all_params]
            if unknown:
                raise ProbeError(
                    f"unknown parameter name(s) {unknown}; the model has {list(all_params)[:8]}…"
                )
            names = [n for n in all_params if n in set(wanted)]
        if not names:
            raise ProbeError("no parameters selected: the model has no trainable parameters")
        self._check_untied(model, names)
        owners = _owner_of(model)
        units: dict[str, _Unit] = {}
        parametrised = {
            mod_name
            for name in names
            for mod_name, _, local in [owners[name]]
            if local.startswith("parametrizations.")
        }
        # Parameters followed op by op: id -> (parameter, name, column)
        self._op_params: dict[int, tuple[nn.Parameter, str, int]] = {}
        for column, name in enumerate(names):
            mod_name, module, local = owners[name]
            if rule_for(module) is None or mod_name in parametrised:
                self._op_params[id(all_params[name])] = (all_params[name], name, column)
                continue
            unit = units.get(mod_name)
            if unit is None:
                unit = units[mod_name] = _Unit(mod_name, module, {})
            unit.columns[local] = column
        self.feature_names: list[str] = names
        self._units = list(units.values())
        self._model_param_ids = {id(p) for p in model.parameters()}
        self._hooks_active = False
        # Device-resident column indices for ``_write_columns``: (device, columns) -> [k]
        self._column_index: dict[tuple[torch.device, tuple[int, ...]], Tensor] = {}

    @staticmethod
    def _check_untied(model: nn.Module, names: list[str]) -> None:
        seen: dict[int, str] = {}
        for n, p in model.named_parameters(remove_duplicate=False):
            if id(p) in seen and (n in names or seen[id(p)] in names):
                raise ProbeError(
                    f"parameter {seen[id(p)]!r} is shared with {n!r}; per-sample norms of tied "
                    "weights are not the sum of per-use norms — not supported"
                )
            seen[id(p)] = n

    @property
    def num_features(self) -> int:
        """L, the number of features per loss."""
        return len(self.feature_names)

    def features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: [B, ...] -> (logits [B, C], features [B, L]) for the probe's loss."""
        out = self.run(x)
        return out.logits, out.features[self.loss]

    def run(
        self, x: Tensor, losses: Iterable[str] | None = None, capture: Iterable[str] = ()
    ) -> ProbeOutput:
        """One forward, then one backward per loss in ``losses`` (default: the probe's loss).

        capture: names of modules whose first input to return (detached).
        """
        loss_names = list(losses) if losses is not None else [self.loss]
        loss_fns = [get_loss(n) for n in loss_names]
        self._check_input(x)
        captured: dict[str, Tensor] = {}
        handles = [self._capture_hook(n, captured) for n in capture]
        feats = {
            n: x.new_zeros(x.shape[0], self.num_features, dtype=torch.float32) for n in loss_names
        }
        # grad_fn nodes of probed layers' outputs, and a memo of which nodes descend from one
        current: dict[str, Any] = {"probed": set(), "memo": {}}
        anchor = torch.zeros((), device=x.device, requires_grad=True)
        handles += [
            u.module.register_forward_hook(self._forward_hook(u, anchor, current), with_kwargs=True)
            for u in self._units
        ]
        batch = x.shape[0]
        current["batch"] = batch
        x_in = x.detach()
        timer = timer_for(x.device)  # CUDA events on a GPU, the host clock on the CPU
        x_in = model_input(self.model, x_in)  # a float16/bfloat16 model takes its dtype
        tracker = None
        if self._op_params:
            tracker = OpTracker(
                params={k: v[0] for k, v in self._op_params.items()},
                names={k: v[1] for k, v in self._op_params.items()},
                columns={k: v[2] for k, v in self._op_params.items()},
                model_params=self._model_param_ids,
                batch=batch,
                attach=lambda out, hook: _attach(out, hook, anchor, current),
                current=current,
            )
            # Everything computed from the batch then requires grad: that is how the tracker
            # tells activations from parameters and constants. The backward never reaches
            # the input (it stops at the first probed ops), so no input gradient is computed.
            x_in.requires_grad_(True)
        try:
            with torch.enable_grad():
                self._hooks_active = True
                timer.mark()
                if tracker is None:
                    logits = self.model(x_in)
                else:
                    with tracker:
                        logits = self.model(x_in)
                timer.mark()
                self._hooks_active = False
                if (
                    not isinstance(logits, Tensor)
                    or logits.dim() != 2
                    or logits.shape[0] != x.shape[0]
                ):
                    raise ProbeError(
                        f"the model must return logits [B, C]; got {_describe(logits)}"
                    )
                for k, (name, fn) in enumerate(zip(loss_names, loss_fns, strict=True)):
                    current["norms"] = norms = {}
                    current["grads"] = grads = {}
                    current["last"] = k == len(loss_fns) - 1
                    # A probed layer the logits do not depend on keeps zero norms: its
                    # gradient is zero, and so may the anchor's path be unused.
                    # The loss in float32 whatever the model's dtype (log_softmax of bf16
                    # logits keeps 8 bits); autocast off, so that the rules sum in the
                    # float32 they are handed (a user's autocast region may be around us).
                    with torch.autocast(x.device.type, enabled=False):
                        torch.autograd.grad(
                            fn(upcast(logits)).sum(),
                            anchor,
                            retain_graph=k < len(loss_fns) - 1,
                            allow_unused=True,
                        )
                    for column, per_sample in grads.items():  # op-level parameters
                        norms[column] = sq_norm(upcast(per_sample))
                    grads.clear()
                    if norms:  # one write of all columns, not one per parameter
                        self._write_columns(feats[name], norms)
                timer.mark()
        finally:
            self._hooks_active = False
            for h in handles:
                h.remove()
            for u in self._units:
                u.args, u.kwargs, u.versions = None, {}, ()
            if tracker is not None:
                tracker.exprs.clear()
                tracker.sites.clear()
            # The graph's hooks hold ``current`` and ``current`` holds graph nodes: a cycle
            # through C++ that Python's collector cannot see. Break it, or every call's
            # graph (activations and all) would stay in memory.
            current.clear()
        forward, backward = timer.intervals()  # a GPU's one synchronisation per batch
        timings = {"forward": forward, "backward": backward}
        return ProbeOutput(logits.detach(), feats, captured, timings)

    def _write_columns(self, out: Tensor, norms: dict[int, Tensor]) -> None:
        """out[:, c] = norms[c] for every column c, in one op and with no host-to-device
        upload per call: all columns in order (the usual case) is one stack; otherwise the
        column index lives on the device, made once per device and set of columns."""
        columns = sorted(norms)
        stacked = torch.stack([norms[c].to(torch.float32) for c in columns], 1)
        if len(columns) == out.shape[1]:
            out.copy_(stacked)
            return
        key = (out.device, tuple(columns))
        index = self._column_index.get(key)
        if index is None:
            index = self._column_index[key] = torch.tensor(columns, device=out.device)
        out.index_copy_(1, index, stacked)

    # -- hooks ---------------------------------------------------------------------------

    def _forward_hook(self, unit: _Unit, anchor: Tensor, current: dict[str, Any]):
        def hook(
            module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
        ) -> Any:
            if not self._hooks_active:  # a fallback re-running the module
                return None
            if unit.args is not None:
                raise ProbeError(
                    f"module {unit.name!r} ran twice in one forward; its per-sample norm is not "
                    "the "
                    "sum of per-call norms — select other parameters"
                )
            if not isinstance(output, Tensor) or not output.is_floating_point():
                raise ProbeError(
                    f"module {unit.name!r} must return one float tensor; got {_describe(output)}"
                )
            batch = current["batch"]
            if (
                output.dim() == 0
                or output.shape[0] != batch
                or any(
                    isinstance(a, Tensor) and (a.dim() == 0 or a.shape[0] != batch) for a in args
                )
            ):
                # Window-partitioned attention (Swin) folds windows into the first dim: a
                # rule would treat each window as a sample.
                raise ProbeError(
                    f"module {unit.name!r} sees tensors whose first dim is not the batch size "
                    f"({batch}): {[tuple(a.shape) for a in args if isinstance(a, Tensor)]} -> "
                    f"{tuple(output.shape)}; the probe needs dim 0 to index samples"
                )
            unit.args = tuple(a.detach() if isinstance(a, Tensor) else a for a in args)
            unit.kwargs = dict(kwargs)
            unit.versions = tuple(a._version for a in unit.args if isinstance(a, Tensor))
            tapped = _attach(output, self._grad_hook(unit, current), anchor, current)
            return None if tapped is output else tapped

        return hook

    def _grad_hook(self, unit: _Unit, current: dict[str, Any]):
        def hook(grad_output: Tensor) -> None:
            args = unit.args
            if args is None:
                return
            now = tuple(a._version for a in args if isinstance(a, Tensor))
            if now != unit.versions:
                raise ProbeError(
                    f"the input of module {unit.name!r} was modified in place after it ran; "
                    "its recorded activations are no longer valid"
                )
            # Rules sum in float32 at least: the squares of fp16 values overflow at 65,504
            # and bf16 keeps 8 mantissa bits (detectors.precision).
            norms = rule_for(unit.module)(unit.module, upcast_all(args), upcast(grad_output))
            out = current["norms"]
            for local, column in unit.columns.items():
                out[column] = norms[local].detach()
            if current["last"]:  # free activations as soon as the last backward used them
                unit.args, unit.kwargs = None, {}

        return hook

    def _capture_hook(self, name: str, captured: dict[str, Tensor]) -> Any:
        try:
            module = self.model.get_submodule(name)
        except AttributeError:
            raise ProbeError(f"no module named {name!r} to capture") from None

        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if self._hooks_active and args and isinstance(args[0], Tensor):
                captured[name] = args[0].detach()

        return module.register_forward_pre_hook(hook)

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise ProbeError(f"x must be a float tensor [B, ...]; got {_describe(x)}")
        if x.dim() < 2 or x.shape[0] == 0:
            raise ProbeError(f"x must be a non-empty batch [B, ...]; got shape {tuple(x.shape)}")
        if torch.is_inference_mode_enabled():
            raise ProbeError(
                "the probe needs autograd; do not call it under torch.inference_mode()"
            )
        if self.model.training:
            raise ProbeError("the model is in training mode; per-sample features need model.eval()")


def _attach(output: Tensor, hook: Any, anchor: Tensor, current: dict[str, Any]) -> Tensor:
    """Register ``hook`` for dJ/d(output); return the tensor the forward continues with.

    Fed by a probed layer (through its inputs or a probed child module): the backward to
    the anchor reaches this output, and a tensor hook registered now sees its gradient even
    if an in-place op (ReLU(inplace), ``out += identity``) modifies it later — no copy.
    No probed layer before it: the backward need not go beyond this output. The anchor (a
    zero) joins the graph here instead; its gradient, one sum over the output per loss,
    costs less than any Python-level hand-over would.
    """
    probed, memo = current["probed"], current["memo"]
    if output.requires_grad and _descends_from([output], probed, memo):
        output.register_hook(hook)
        probed.add(output.grad_fn)
        return output
    tapped = output.detach() + anchor
    tapped.register_hook(hook)
    probed.add(tapped.grad_fn)
    return tapped


def _descends_from(tensors: list[Tensor], nodes: set[Any], memo: dict[Any, bool]) -> bool:
    """Whether the autograd graph behind ``tensors`` reaches any of ``nodes``.

    ``memo`` caches the answer per node for one forward pass: nodes added to ``nodes``
    later run later, so they are never ancestors of a node already answered.
    """
    stack = [t.grad_fn for t in tensors if t.grad_fn is not None]
    seen: set[Any] = set()
    while stack:
        node = stack.pop()
        if node in nodes or memo.get(node, False):
            return True
        if node in seen or node in memo:
            continue
        seen.add(node)
        stack.extend(n for n, _ in node.next_functions if n is not None)
    for visited in seen:
        memo[visited] = False
    return False


def _describe(obj: Any) -> str:
    if isinstance(obj, Tensor):
        return f"tensor of shape {tuple(obj.shape)} and dtype {obj.dtype}"
    return type(obj).__name__
