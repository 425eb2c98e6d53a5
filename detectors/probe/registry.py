"""Registry of per-layer norm rules, keyed by exact module type.

A rule turns what one batched backward recorded for a module — its inputs and the
gradient of the loss with respect to its output — into the per-sample squared norm
of the gradient of each of the module's own parameters. Exact type matching (not
``isinstance``) keeps subclasses that override ``forward`` on the exact fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor, nn


class ProbeError(ValueError):
    """The probe cannot compute exact per-sample features for this model or input."""


class NormRule(Protocol):
    """``rule(module, inputs, grad_output) -> {local param name: [B] squared norms}``.

    ``inputs`` are the module's positional inputs as recorded in the forward pass
    (batch first); ``grad_output`` is dJ/d(output), same shape as the output [B, ...].
    Parameters that are ``None`` (e.g. ``bias=False``) are simply absent.
    """

    def __call__(
        self, module: nn.Module, inputs: tuple[Tensor, ...], grad_output: Tensor
    ) -> dict[str, Tensor]: ...


_RULES: dict[type[nn.Module], NormRule] = {}


def register_rule(*module_types: type[nn.Module]) -> Callable[[NormRule], NormRule]:
    """Decorator: register ``rule`` for each of ``module_types`` (exact types)."""

    def decorate(rule: NormRule) -> NormRule:
        for module_type in module_types:
            if module_type in _RULES:
                raise ValueError(f"a norm rule for {module_type.__name__} is already registered")
            _RULES[module_type] = rule
        return rule

    return decorate


def rule_for(module: nn.Module) -> NormRule | None:
    """The registered rule for ``type(module)``, or None (→ exact fallback)."""
    return _RULES.get(type(module))


def registered_types() -> tuple[type[nn.Module], ...]:
    """Module types with a registered rule, in registration order."""
    return tuple(_RULES)


class FunctionalRule(Protocol):
    """``rule(call, grad_output) -> {role: [B] squared norms}`` for a functional op.

    ``call`` is the op's arguments by name (from the entry's ``bind``), with the input
    recorded in the forward pass; roles are argument names ("weight", "bias").
    """

    def __call__(self, call: dict[str, Any], grad_output: Tensor) -> dict[str, Tensor]: ...


@dataclass(frozen=True)
class FunctionalEntry:
    """A functional op's rule and ``bind(*args, **kwargs) -> {argument name: value}``."""

    rule: FunctionalRule
    bind: Callable[..., dict[str, Any]]


_FUNCTIONAL: dict[Callable[..., Any], FunctionalEntry] = {}


def register_functional(
    *funcs: Callable[..., Any], bind: Callable[..., dict[str, Any]]
) -> Callable[[FunctionalRule], FunctionalRule]:
    """Decorator: register ``rule`` for calls of ``funcs`` (e.g. ``F.conv2d``) whose weight or
    bias is a probed parameter of a module with no module rule (a subclass overriding
    ``forward``, or a custom module calling the functional op)."""

    def decorate(rule: FunctionalRule) -> FunctionalRule:
        for func in funcs:
            if func in _FUNCTIONAL:
                raise ValueError(f"a functional rule for {func.__name__} is already registered")
            _FUNCTIONAL[func] = FunctionalEntry(rule, bind)
        return rule

    return decorate


def functional_rule_for(func: Callable[..., Any]) -> FunctionalEntry | None:
    """The registered functional rule for ``func``, or None (→ exact per-op fallback)."""
    return _FUNCTIONAL.get(func)


def registered_functionals() -> tuple[Callable[..., Any], ...]:
    """Functional ops with a registered rule, in registration order."""
    return tuple(_FUNCTIONAL)
