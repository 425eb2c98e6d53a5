"""The challenge contract and registry.

A challenge turns clean in-distribution inputs into challenging ones (adversarial,
corrupted) or produces out-of-distribution inputs of the same shape. Each is a
``Challenge`` subclass in its own module, registered with ``@register`` and imported
explicitly by the package ``__init__``; ``parse_spec`` builds one from text such as
``pgd:eps=0.3,steps=40`` (grammar in ``detectors.challenges.spec``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar, get_args

import numpy as np
from torch import nn

from detectors.challenges.errors import ChallengeError
from detectors.challenges.seeding import MAX_SEED
from detectors.challenges.spec import (
    IDENTIFIER,
    ParamValue,
    check_value,
    coerce,
    format_spec,
    split_spec,
)
from detectors.data import DataError, check_images, check_labels

Kind = Literal["adversarial", "corrupted", "ood"]
KINDS: tuple[Kind, ...] = get_args(Kind)


@dataclass
class ChallengeContext:
    """What a challenge works on.

    images: float32 ``[N, C, H, W]`` in [0, 1], the clean inputs to perturb (OOD
        challenges use only N and the shape).
    labels: int64 ``[N]`` true classes; None lets attacks use the model's predictions.
    model: the classifier attacks target (eval mode; float ``[B, C, H, W]`` in [0, 1] in,
        logits ``[B, classes]`` out). Attacks leave it as they found it. None is fine
        for challenges that do not query a model.
    seed: 0 .. 2**32 - 1; the same seed gives the same output.
    batch_size: images per model call.
    progress: show a progress bar on long work.
    """

    images: np.ndarray
    labels: np.ndarray | None
    model: nn.Module | None
    seed: int
    batch_size: int = 64
    progress: bool = False

    def __post_init__(self) -> None:
        try:
            check_images(self.images, what="ChallengeContext.images")
            if self.labels is not None:
                self.labels = check_labels(self.labels, len(self.images), what="ChallengeContext")
        except DataError as exc:
            raise ChallengeError(str(exc)) from None
        if len(self.images) == 0:
            raise ChallengeError("ChallengeContext.images is empty; give at least one image")
        if self.model is not None and not isinstance(self.model, nn.Module):
            raise ChallengeError(
                f"ChallengeContext.model must be a torch nn.Module or None, "
                f"got {type(self.model).__name__}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer):
            raise ChallengeError(f"ChallengeContext.seed must be an int, got {self.seed!r}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ChallengeError(f"ChallengeContext.seed must be in 0..{MAX_SEED}, got {self.seed}")
        self.seed = int(self.seed)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int):
            raise ChallengeError(f"batch_size must be an int, got {self.batch_size!r}")
        if self.batch_size < 1:
            raise ChallengeError(f"batch_size must be >= 1, got {self.batch_size}")


class Challenge(ABC):
    """A seeded, reproducible generator of challenging inputs.

    Subclasses set ``name``, ``kind`` and ``defaults`` (parameter name -> default value;
    the default's type is the parameter's type), check ranges in ``validate`` and
    implement ``_generate``. Construct with keyword parameters, or from a spec with
    ``parse_spec``; unknown parameters or bad values raise ChallengeError.
    """

    name: ClassVar[str]
    kind: ClassVar[Kind]
    defaults: ClassVar[Mapping[str, ParamValue]] = {}

    def __init__(self, **params: ParamValue) -> None:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            known = ", ".join(self.defaults) or "none"
            raise ChallengeError(
                f"{self.name}: unknown parameter(s) {', '.join(unknown)} (known: {known})"
            )
        self._params: dict[str, ParamValue] = {
            key: check_value(self.name, key, params.get(key, default), default)
            for key, default in self.defaults.items()
        }
        self.validate()

    @property
    def params(self) -> dict[str, ParamValue]:
        """Every parameter's value, in declared order (a copy)."""
        return dict(self._params)

    @property
    def spec(self) -> str:
        """The canonical spec; ``parse_spec(c.spec) == c``."""
        return format_spec(self.name, self._params)

    @property
    def stochastic(self) -> bool:
        """Whether the seed changes the output (False: the same output for every seed)."""
        return True

    @property
    def uses_model(self) -> bool:
        """Whether the output depends on the model (attacks); corruptions and OOD sets
        depend only on the clean images and the seed."""
        return False

    def validate(self) -> None:
        """Check parameter ranges; raise ChallengeError naming the parameter."""
        return None  # no ranges to check unless a subclass declares some

    def _require(self, ok: bool, message: str) -> None:
        if not ok:
            raise ChallengeError(f"{self.name}: {message}")

    # Typed reads of parameters whose declared type (their default's) is known.
    def _float(self, key: str) -> float:
        return float(self._params[key])

    def _int(self, key: str) -> int:
        return int(self._params[key])

    def _bool(self, key: str) -> bool:
        return bool(self._params[key])

    def _str(self, key: str) -> str:
        return str(self._params[key])

    def generate(self, ctx: ChallengeContext) -> np.ndarray:
        """Challenging inputs for ``ctx``: float32 ``[N, C, H, W]`` in [0, 1], ctx's shape."""
        if not isinstance(ctx, ChallengeContext):
            raise TypeError(f"generate needs a ChallengeContext, got {type(ctx).__name__}")
        out = np.asarray(self._generate(ctx))
        if out.shape != ctx.images.shape:
            raise RuntimeError(f"{self.spec} produced shape {out.shape}, not {ctx.images.shape}")
        if not np.isfinite(out).all():
            raise RuntimeError(f"{self.spec} produced NaN or infinite values")
        # Attack libraries can overshoot the box by float rounding; the contract is [0, 1].
        return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)

    @abstractmethod
    def _generate(self, ctx: ChallengeContext) -> np.ndarray:
        """Produce the images (any float dtype, ctx's shape)."""

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.spec == self.spec  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self.spec)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


_REGISTRY: dict[str, type[Challenge]] = {}
C = TypeVar("C", bound=type[Challenge])


def register(cls: C) -> C:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, Challenge)):
        raise TypeError(f"register expects a Challenge subclass, got {cls!r}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not IDENTIFIER.match(name):
        raise ValueError(f"{cls.__name__}.name must be a lower-case identifier, got {name!r}")
    if getattr(cls, "kind", None) not in KINDS:
        raise ValueError(f"{cls.__name__}.kind must be one of {KINDS}, got {cls.kind!r}")
    for key, default in cls.defaults.items():
        if not IDENTIFIER.match(key) or not isinstance(default, bool | int | float | str):
            raise ValueError(f"{cls.__name__}.defaults: bad parameter {key!r}={default!r}")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"a challenge named {name!r} is already registered")
    _REGISTRY[name] = cls
    return cls


def available() -> dict[str, type[Challenge]]:
    """Registered challenges by name, sorted."""
    return dict(sorted(_REGISTRY.items()))


def get_challenge(name: str) -> type[Challenge]:
    """The challenge class registered as ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise ChallengeError(f"unknown challenge {name!r} (known: {known})") from None


def parse_spec(spec: str) -> Challenge:
    """Build a challenge from ``name`` or ``name:key=value,...`` (see ``spec`` module)."""
    name, raw = split_spec(spec)
    cls = get_challenge(name)
    params: dict[str, Any] = {}
    for key, text in raw.items():
        if key not in cls.defaults:
            known = ", ".join(cls.defaults) or "none"
            raise ChallengeError(f"{name}: unknown parameter {key!r} (known: {known})")
        params[key] = coerce(name, key, text, cls.defaults[key])
    return cls(**params)
