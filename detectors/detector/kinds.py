"""The row labels H is fitted on: clean rows and the challenge kinds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CLEAN = "clean"
# Canonical order: fitted detectors list their kinds in this order, whatever the input order.
CHALLENGE_KINDS: tuple[str, ...] = ("adversarial", "ood", "corrupted")
ALL_KINDS: tuple[str, ...] = (CLEAN, *CHALLENGE_KINDS)


def check_kinds(kinds: Sequence[str] | np.ndarray, n_rows: int) -> np.ndarray:
    """Validate per-row labels and return them as a str array [n_rows].

    Raises ValueError for a wrong length or names outside ``ALL_KINDS``, TypeError for non-strings.
    """
    arr = np.asarray(kinds, dtype=object)
    if arr.ndim != 1:
        raise ValueError(f"kinds must be 1-D (one label per row), got shape {arr.shape}")
    if len(arr) != n_rows:
        raise ValueError(f"kinds has {len(arr)} labels but X has {n_rows} rows")
    bad_types = sorted({type(k).__name__ for k in arr if not isinstance(k, str)})
    if bad_types:
        raise TypeError(f"kinds must be strings, got values of type {', '.join(bad_types)}")
    unknown = sorted(set(arr.tolist()) - set(ALL_KINDS))
    if unknown:
        raise ValueError(f"unknown kind(s) {unknown}; expected some of {list(ALL_KINDS)}")
    return arr.astype(str)


def check_kind_list(kinds: Sequence[str]) -> tuple[str, ...]:
    """Validate a detector's list of challenge kinds (non-empty, known, no repeats, no clean).

    Returns them in canonical order.
    """
    if isinstance(kinds, str) or not all(isinstance(k, str) for k in kinds):
        raise TypeError(f"kinds must be a list of strings, got {kinds!r}")
    unknown = sorted(set(kinds) - set(CHALLENGE_KINDS))
    if unknown:
        raise ValueError(
            f"unknown challenge kind(s) {unknown}; expected some of {list(CHALLENGE_KINDS)}"
        )
    if len(set(kinds)) != len(kinds) or not kinds:
        raise ValueError(f"kinds must be a non-empty list without repeats, got {list(kinds)}")
    return tuple(k for k in CHALLENGE_KINDS if k in kinds)
