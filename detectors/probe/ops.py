"""Per-sample norms of parameters used by modules that have no module rule, op by op.

A module with no registered rule (a subclass that overrides ``forward``, a model's own
block with a class token, a position embedding or a layer scale, a parametrised weight)
is not re-run per sample. Instead, while the probe's forward runs, a torch function mode
watches every op that reads one of its probed parameters:

- an op on parameters (and constants) alone — ``cls_token.expand(B, -1, -1)``,
  ``gamma.view(1, -1, 1, 1)``, ``table[index]``, a weight-norm reparametrisation —
  makes a *parameter expression*: a tensor remembered with the recipe that rebuilds it
  from the parameters;
- the op where an expression meets the batch's activations is a *site*: the gradient of
  its output, hooked in the batched backward, gives each sample's parameter gradient.
  ``F.conv2d`` / ``F.linear`` / ``F.layer_norm`` with a probed weight or bias go to the
  functional rule registered for them (norms without per-sample gradients); any other
  op (add, mul, cat, prelu, conv3d, ...) is differentiated sample by sample with
  ``torch.func.vmap`` over that one op — exact, and cheap because the op is elementwise
  or small, not the whole module. Its per-sample gradient with respect to the
  expression is mapped back to the parameters through the recipe.

An activation is a tensor that requires grad (the probe makes the input require it when
ops are watched, so everything computed from the batch does) and is not a parameter or
an expression, or a tensor without grad whose first dim is the batch size where the op's
output has it too (integer ids, masks). Per-sample gradients of a parameter used at
several sites add up before their norm is taken; a parameter used by two rule sites is
refused (norms of parts do not add).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torch.func import grad, vmap
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_unflatten

from detectors.precision import upcast
from detectors.probe.registry import ProbeError, functional_rule_for

# Ops whose output repeats a parameter expression along a new batch-sized first dim.
_BROADCASTS = {"expand", "expand_as", "broadcast_to", "repeat", "tile"}
_ROLES = ("weight", "bias")


@dataclass(frozen=True)
class _Expr:
    """A tensor computed from probed parameters and constants alone.

    recipe: {parameter id: value} -> the tensor; params: the parameter ids it reads;
    broadcast: its rows along dim 0 are copies of one row, made by expanding to the batch.
    """

    recipe: Callable[[dict[int, Tensor]], Tensor]
    params: frozenset[int]
    broadcast: bool = False


Attach = Callable[[Tensor, Callable[[Tensor], None]], Tensor]


class OpTracker(TorchFunctionMode):
    """Watches one forward pass; see the module docstring.

    params: id -> probed parameter (of modules with no rule); columns: id -> feature
    column; model_params: ids of every parameter of the model (never activations);
    batch: B; attach(output, hook) registers ``hook`` for dJ/d(output) and returns the
    tensor the forward continues with; current: the probe's per-pass state, where sites
    write ``norms`` (column -> [B]) and ``grads`` (column -> [B, *shape]).
    """

    def __init__(
        self,
        params: dict[int, nn.Parameter],
        names: dict[int, str],
        columns: dict[int, int],
        model_params: set[int],
        batch: int,
        attach: Attach,
        current: dict[str, Any],
    ) -> None:
        super().__init__()
        self.names, self.columns = names, columns
        self.model_params, self.batch = model_params, batch
        self.attach, self.current = attach, current
        # id -> (tensor kept alive so its id stays unique during the pass, expression)
        self.exprs: dict[int, tuple[Tensor, _Expr]] = {
            pid: (p, _Expr(lambda v, pid=pid: v[pid], frozenset((pid,))))
            for pid, p in params.items()
        }
        self.params = params
        self.rule_uses: set[int] = set()
        self.grad_uses: set[int] = set()
        self.sites: list[dict[str, Any]] = []  # recorded inputs, freed after the last backward

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        leaves, spec = tree_flatten((args, kwargs))
        exprs = [
            self.exprs[id(leaf)][1] if isinstance(leaf, Tensor) and id(leaf) in self.exprs else None
            for leaf in leaves
        ]
        if not any(exprs):
            return func(*args, **kwargs)
        versions = [leaf._version if isinstance(leaf, Tensor) else None for leaf in leaves]
        out = func(*args, **kwargs)
        batched = [
            i
            for i, leaf in enumerate(leaves)
            if exprs[i] is None and isinstance(leaf, Tensor) and self._is_activation(leaf, out)
        ]
        if not batched:
            self._record_expr(func, leaves, spec, exprs, out)
            return out
        return self._site(func, leaves, spec, exprs, batched, versions, out)

    # -- parameter expressions -------------------------------------------------------------

    def _is_activation(self, t: Tensor, out: Any) -> bool:
        if id(t) in self.model_params:
            return False
        if t.requires_grad:
            return True
        return (
            t.dim() > 0
            and t.shape[0] == self.batch
            and isinstance(out, Tensor)
            and out.dim() > 0
            and out.shape[0] == self.batch
        )

    def _record_expr(
        self, func: Callable[..., Any], leaves: list[Any], spec: Any, exprs: list, out: Any
    ) -> None:
        outs = out if isinstance(out, (tuple, list)) else (out,)
        if not any(isinstance(o, Tensor) for o in outs):
            return  # a size, a dtype, a bool: nothing to follow
        consts = [leaf.detach() if isinstance(leaf, Tensor) else leaf for leaf in leaves]
        subs = [(i, e) for i, e in enumerate(exprs) if e is not None]
        params = frozenset().union(*(e.params for _, e in subs))

        def recipe(v: dict[int, Tensor]) -> Any:
            new = list(consts)
            for i, e in subs:
                new[i] = e.recipe(v)
            a, kw = tree_unflatten(new, spec)
            return func(*a, **kw)

        name = getattr(func, "__name__", "")
        for k, o in enumerate(outs):
            if not isinstance(o, Tensor):
                continue
            batch_rows = o.dim() > 0 and o.shape[0] == self.batch
            broadcast = batch_rows and (
                any(e.broadcast for _, e in subs)
                or (name in _BROADCASTS and _grows_first_dim(leaves[subs[0][0]], o))
            )
            part = recipe if o is out else (lambda v, k=k: recipe(v)[k])
            self.exprs[id(o)] = (o, _Expr(part, params, broadcast))

    # -- sites -------------------------------------------------------------------------------

    def _site(
        self,
        func: Callable[..., Any],
        leaves: list[Any],
        spec: Any,
        exprs: list,
        batched: list[int],
        versions: list[int | None],
        out: Any,
    ) -> Any:
        if not isinstance(out, Tensor) or out.dim() == 0 or out.shape[0] != self.batch:
            raise ProbeError(
                f"{_op_name(func)} combines probed parameter(s) {self._names(exprs)} with the "
                f"batch but returns {_describe(out)}; the probe needs one tensor whose first dim "
                f"is the batch size ({self.batch})"
            )
        entry = functional_rule_for(func)
        if entry is not None:
            a, kw = tree_unflatten(list(leaves), spec)
            call = entry.bind(*a, **kw)
            roles = {r: id(call[r]) for r in _ROLES if id(call.get(r)) in self.params}
            direct = {id(leaves[i]) for i, e in enumerate(exprs) if e is not None}
            if (
                roles
                and direct == set(roles.values())
                and all(self.exprs[pid][1].params == {pid} for pid in direct)
            ):
                return self._rule_site(entry, call, roles, leaves, batched, versions, out)
        return self._grad_site(func, leaves, spec, exprs, batched, versions, out)

    def _rule_site(
        self,
        entry: Any,
        call: dict[str, Any],
        roles: dict[str, int],
        leaves: list[Any],
        batched: list[int],
        versions: list[int | None],
        out: Tensor,
    ) -> Tensor:
        for pid in roles.values():
            if pid in self.rule_uses or pid in self.grad_uses:
                raise ProbeError(self._twice(pid))
            self.rule_uses.add(pid)
        call = dict(call, input=call["input"].detach())
        site = {"call": call, "checks": self._checks(leaves, batched, versions)}
        self.sites.append(site)
        columns = {role: self.columns[pid] for role, pid in roles.items()}

        def hook(g: Tensor) -> None:
            if "call" not in site:
                return
            self._verify(site, func_name=_op_name(entry.rule))
            call = dict(site["call"], input=upcast(site["call"]["input"]))  # sum in fp32
            norms = entry.rule(call, upcast(g))
            for role, column in columns.items():
                self.current["norms"][column] = norms[role].detach()
            if self.current["last"]:
                site.clear()

        return self.attach(out, hook)

    def _grad_site(
        self,
        func: Callable[..., Any],
        leaves: list[Any],
        spec: Any,
        exprs: list,
        batched: list[int],
        versions: list[int | None],
        out: Tensor,
    ) -> Tensor:
        pids = sorted(frozenset().union(*(e.params for e in exprs if e is not None)))
        for pid in pids:
            if pid in self.rule_uses:
                raise ProbeError(self._twice(pid))
            self.grad_uses.add(pid)
        consts = [leaf.detach() if isinstance(leaf, Tensor) else leaf for leaf in leaves]
        subs = [(i, e) for i, e in enumerate(exprs) if e is not None]
        site = {
            "batched": tuple(consts[i] for i in batched),
            "checks": self._checks(leaves, batched, versions),
        }
        self.sites.append(site)

        def one(values: tuple[Tensor, ...], rows: tuple[Tensor, ...], g: Tensor) -> Tensor:
            v = dict(zip(pids, values, strict=True))
            new = list(consts)
            for i, e in subs:
                value = e.recipe(v)
                new[i] = value[:1] if e.broadcast else value
            for i, row in zip(batched, rows, strict=True):
                new[i] = row.unsqueeze(0)  # a batch of one: the op sees the shapes it expects
            a, kw = tree_unflatten(new, spec)
            return (func(*a, **kw) * g.unsqueeze(0)).sum()

        per_sample = vmap(grad(one), in_dims=(None, 0, 0))
        params = self.params
        columns = [self.columns[pid] for pid in pids]

        def hook(g: Tensor) -> None:
            if "batched" not in site:
                return
            self._verify(site, func_name=_op_name(func))
            values = tuple(params[pid].detach() for pid in pids)
            grads = per_sample(values, site["batched"], g)
            acc = self.current["grads"]
            for column, gr in zip(columns, grads, strict=True):
                gr = gr.detach()
                acc[column] = gr if column not in acc else acc[column] + gr
            if self.current["last"]:
                site.clear()

        return self.attach(out, hook)

    # -- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _checks(
        leaves: list[Any], batched: list[int], versions: list[int | None]
    ) -> list[tuple[Tensor, int]]:
        return [(leaves[i], versions[i]) for i in batched]  # type: ignore[misc]

    @staticmethod
    def _verify(site: dict[str, Any], func_name: str) -> None:
        for t, version in site["checks"]:
            if t._version != version:
                raise ProbeError(
                    f"an input of {func_name} was modified in place after it read a probed "
                    "parameter; its recorded activations are no longer valid"
                )

    def _names(self, exprs: list) -> list[str]:
        pids = frozenset().union(*(e.params for e in exprs if e is not None))
        return sorted(self.names[p] for p in pids)

    def _twice(self, pid: int) -> str:
        return (
            f"parameter {self.names[pid]!r} is used by more than one op whose norms the probe "
            "computes separately in one forward; norms of parts do not add — select other "
            "parameters"
        )


def _grows_first_dim(inp: Tensor, out: Tensor) -> bool:
    """Whether ``out``'s first dim repeats one row of ``inp`` (a new leading dim, or size 1)."""
    return inp.dim() < out.dim() or inp.shape[0] == 1


def _op_name(func: Any) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))


def _describe(obj: Any) -> str:
    if isinstance(obj, Tensor):
        return f"a tensor of shape {tuple(obj.shape)}"
    return type(obj).__name__
