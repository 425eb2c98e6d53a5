"""The challenge spec grammar: ``name`` or ``name:key=value,key=value``.

::

    spec  := name [ ":" param ( "," param )* ]
    param := key "=" value
    name, key: lower-case identifiers ([a-z][a-z0-9_]*)
    value: any text without a comma; surrounding spaces are ignored

A value takes the type of the parameter's default: int (``40``), float (``0.3``,
``1e-3``), bool (``true``/``false``) or str (may contain ``:`` and ``=``, e.g. a path).
The canonical form lists every parameter in the challenge's declared order, floats
written so they read back exactly, e.g. ``pgd:eps=0.3,eps_step=0.01,steps=40,random_init=true``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from detectors.challenges.errors import ChallengeError

ParamValue = bool | int | float | str
IDENTIFIER = re.compile(r"[a-z][a-z0-9_]*\Z")
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def split_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Split a spec into its name and raw (string) parameter values."""
    if not isinstance(spec, str) or not spec.strip():
        raise ChallengeError(f"a challenge spec must be a non-empty string, got {spec!r}")
    name, _, rest = spec.partition(":")
    name = name.strip()
    if not IDENTIFIER.match(name):
        raise ChallengeError(f"{spec!r}: challenge name {name!r} is not a lower-case identifier")
    raw: dict[str, str] = {}
    if not rest.strip():
        if ":" in spec:
            raise ChallengeError(f"{spec!r}: nothing after ':'; write 'name' or 'name:key=value'")
        return name, raw
    for item in rest.split(","):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not IDENTIFIER.match(key):
            raise ChallengeError(f"{spec!r}: {item.strip()!r} is not of the form key=value")
        if key in raw:
            raise ChallengeError(f"{spec!r}: parameter {key!r} given twice")
        raw[key] = value.strip()
    return name, raw


def coerce(challenge: str, key: str, raw: str, default: ParamValue) -> ParamValue:
    """Turn the text ``raw`` into the type of ``default`` (bool before int: bool is an int)."""
    try:
        if isinstance(default, bool):
            lowered = raw.lower()
            if lowered not in _TRUE + _FALSE:
                raise ValueError(raw)
            return lowered in _TRUE
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        kind = {bool: "true or false", int: "an integer", float: "a number"}[type(default)]
        raise ChallengeError(f"{challenge}: {key}={raw!r} is not {kind}") from None
    return raw


def check_value(challenge: str, key: str, value: object, default: ParamValue) -> ParamValue:
    """Check a Python value against the type of ``default``; ints are accepted as floats."""
    expected: str | None = None
    if isinstance(default, bool):
        expected = None if isinstance(value, bool) else "a bool"
    elif isinstance(default, int):
        expected = None if isinstance(value, int) and not isinstance(value, bool) else "an int"
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
            expected = None if math.isfinite(value) else "a finite number"
        else:
            expected = "a number"
    elif isinstance(value, str):
        if "," in value or value != value.strip() or not value:
            expected = "a non-empty string without commas or surrounding spaces"
    else:
        expected = "a string"
    if expected is not None:
        raise ChallengeError(f"{challenge}: {key} must be {expected}, got {value!r}")
    return value  # type: ignore[return-value]


def format_value(value: ParamValue) -> str:
    """The spec text of a value; ``coerce`` reads it back to an equal value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def format_spec(name: str, params: Mapping[str, ParamValue]) -> str:
    """The canonical spec: the name, then every parameter in the given order."""
    if not params:
        return name
    return name + ":" + ",".join(f"{k}={format_value(v)}" for k, v in params.items())
