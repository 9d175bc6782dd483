"""Argument checks shared by the task samplers."""

from __future__ import annotations

import numbers
from typing import Any


def check_count(name: str, n: Any, low: int = 1) -> int:
    """Return ``n`` as an int if it is an integer ``>= low`` (numpy integers too), else raise.

    Integral floats such as ``5.0`` pass; ``bool``, ``None``, ``2.5`` and strings raise a
    ``ValueError`` that names the argument.
    """
    ok = not isinstance(n, bool) and isinstance(n, numbers.Real) and float(n).is_integer()
    if not ok or n < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {n!r}")
    return int(n)
