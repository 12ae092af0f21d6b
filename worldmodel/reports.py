"""Strict JSON for the reports the commands write (`dlh eval`/`analyze`, the agents' reports):
NaN and infinities become null, as every JSON reader expects."""

from __future__ import annotations

import json
import math
from typing import Any


def json_safe(value: Any) -> Any:
    """Replace NaN/inf floats by None, recursively (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def json_text(value: Any) -> str:
    """`value` as indented JSON with NaN and infinities written as null (strict JSON)."""
    return json.dumps(json_safe(value), indent=1, allow_nan=False)


__all__ = ["json_safe", "json_text"]
