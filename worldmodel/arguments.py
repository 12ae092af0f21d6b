"""The one check of integer arguments, shared by the configs, the model API, the data layer,
`envs` and `agents`: "an int, not a bool, in range", with NumPy integer scalars (`np.int64(3)`,
what indexing an array gives) accepted and returned as a Python int.

It imports nothing of the package, so every module can use it without an import cycle.
"""

from __future__ import annotations

import numbers
import reprlib
from typing import Any


def is_int(value: Any) -> bool:
    """An integer value: a Python int or a NumPy integer scalar, never a bool (nor np.bool_)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxstring, _BRIEF.maxother, _BRIEF.maxlong = 3, 80, 80, 40
_BRIEF.maxlist = _BRIEF.maxtuple = _BRIEF.maxdict = _BRIEF.maxset = 8
BRIEF_LIMIT = 200  # characters of a value an error message shows at most


def brief(value: Any) -> str:
    """`repr(value)` cut short for an error message: at most `BRIEF_LIMIT` characters, and never
    expanding a huge value first (a nested list of millions of items, an int of a million digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4000:
        return f"an int of about {int(value.bit_length() * 0.30103)} digits"
    try:
        text = _BRIEF.repr(value)
    except Exception:  # a repr that fails: say what it is
        text = f"<{type(value).__name__}>"
    return text if len(text) <= BRIEF_LIMIT else text[:BRIEF_LIMIT - 3] + "..."


def int_bounds(minimum: int | None = None, maximum: int | None = None) -> str:
    """How `check_int` words a range: "a positive int", "an int in [0, 255]", ..."""
    if minimum is not None and maximum is not None:
        return f"an int in [{minimum}, {maximum}]"
    if minimum == 1:
        return "a positive int"
    if minimum == 0:
        return "a non-negative int"
    if minimum is not None:
        return f"an int >= {minimum}"
    if maximum is not None:
        return f"an int <= {maximum}"
    return "an int"


def check_int(value: Any, name: str, minimum: int | None = None, maximum: int | None = None,
              *, hint: str = "") -> int:
    """`value` as a Python int if it is an integer (`is_int`) in [minimum, maximum].

    Raises:
        ValueError: "{name}: expected a positive int, got True" (the range worded by
            `int_bounds`, then `hint` in parentheses when given).
    """
    if not is_int(value) or (minimum is not None and value < minimum) \
            or (maximum is not None and value > maximum):
        extra = f" ({hint})" if hint else ""
        raise ValueError(f"{name}: expected {int_bounds(minimum, maximum)}{extra}, got {brief(value)}")
    return int(value)


__all__ = ["check_int", "int_bounds", "is_int", "brief"]
