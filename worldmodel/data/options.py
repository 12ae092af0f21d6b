"""Validation of the data-set specific ``data.options`` mapping.

Every data set declares its options as a small frozen dataclass whose
``__post_init__`` checks and normalises each field with the helpers below (a YAML
list becomes a tuple, an int becomes a float where a float is expected).
:func:`parse_options` rejects unknown keys by name, listing the allowed ones.

Example::

    >>> from worldmodel.data.moving_ball import MovingBallOptions
    >>> parse_options(MovingBallOptions, {"lam": 0.1}, "moving_ball").lam
    0.1
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from worldmodel.arguments import brief
from worldmodel.arguments import check_int as check_integer

OptionsT = TypeVar("OptionsT")


def parse_options(cls: type[OptionsT], options: Mapping[str, Any] | None, dataset: str) -> OptionsT:
    """Build the options dataclass ``cls`` from a plain mapping.

    Raises ``ValueError`` naming an unknown key (with the allowed keys) or a bad value.
    """
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise ValueError(
            f"data.options must be a mapping of option names to values, "
            f"got {type(options).__name__}: {brief(options)}"
        )
    allowed = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    for key in options:
        if key not in allowed:
            listed = ", ".join(allowed) if allowed else "(none)"
            raise ValueError(
                f"unknown option {brief(key)} for data set {dataset!r}; allowed options: {listed}"
            )
    return cls(**dict(options))


def _name(field: str) -> str:
    return f"data.options.{field}"


def set_field(obj: object, field: str, value: object) -> None:
    """Assign a normalised value on a frozen dataclass inside ``__post_init__``."""
    object.__setattr__(obj, field, value)


def check_int(field: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """Return ``value`` as an int in ``[lo, hi]`` or raise ValueError naming ``field``."""
    return check_integer(value, _name(field), lo, hi)


def check_float(
    field: str, value: Any, lo: float | None = None, hi: float | None = None
) -> float:
    """Return ``value`` as a finite float in ``[lo, hi]`` or raise ValueError naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{_name(field)} must be a number, got {brief(value)}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{_name(field)} must be finite, got {value}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{_name(field)} must be in [{lo}, {hi}], got {value}")
    return value


def check_bool(field: str, value: Any) -> bool:
    """Return ``value`` if it is a bool, else raise ValueError naming ``field``."""
    if not isinstance(value, bool):
        raise ValueError(f"{_name(field)} must be true or false, got {brief(value)}")
    return value


def check_choice(field: str, value: Any, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ValueError naming ``field``."""
    if value not in choices:
        raise ValueError(f"{_name(field)} must be one of {list(choices)}, got {brief(value)}")
    return str(value)


def check_range(field: str, value: Any, lo: float, hi: float) -> tuple[float, float]:
    """A fixed number ``v`` or a pair ``[a, b]`` with ``lo <= a <= b <= hi``; returns ``(a, b)``."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != 2:
            raise ValueError(f"{_name(field)} must be a number or a pair [min, max], got {brief(value)}")
        a = check_float(field, value[0], lo, hi)
        b = check_float(field, value[1], lo, hi)
        if a > b:
            raise ValueError(f"{_name(field)} must satisfy min <= max, got {brief(value)}")
        return (a, b)
    v = check_float(field, value, lo, hi)
    return (v, v)


def check_int_tuple(field: str, value: Any, lo: int, hi: int) -> tuple[int, ...]:
    """A non-empty list of integers in ``[lo, hi]``, returned as a tuple."""
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) == 0:
        raise ValueError(f"{_name(field)} must be a non-empty list of integers, got {brief(value)}")
    return tuple(check_int(field, v, lo, hi) for v in value)


def check_rgb(field: str, value: Any) -> tuple[int, int, int]:
    """An RGB triple of integers in [0, 255]."""
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 3:
        raise ValueError(f"{_name(field)} must be an RGB triple [r, g, b] in 0..255, got {brief(value)}")
    r, g, b = (check_int(field, v, 0, 255) for v in value)
    return (r, g, b)
