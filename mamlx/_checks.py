"""Argument checks shared by the samplers and the learned-optimizer settings."""

from __future__ import annotations

import numbers
import operator
from typing import Any

import numpy as np


def check_bool(name: str, v: Any) -> bool:
    """``True``/``False`` only (the string ``"False"`` would read as true)."""
    if not isinstance(v, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {v!r}")
    return bool(v)


def check_count(name: str, n: Any, low: int = 1) -> int:
    """Return ``n`` as an int if it is an integer ``>= low``, else raise a ``ValueError``.

    Python, NumPy and concrete 0-d JAX integers pass, and so do integral floats such as
    ``5.0``; ``bool``, ``None``, ``2.5`` and strings raise, naming the argument.
    """
    value = None
    if not isinstance(n, (bool, np.bool_)) and np.dtype(getattr(n, "dtype", int)) != np.bool_:
        try:
            value = operator.index(n)
        except TypeError:
            if isinstance(n, numbers.Real) and float(n).is_integer():
                value = int(n)
    if value is None or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {n!r}")
    return value
