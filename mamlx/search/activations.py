"""Search space 2: activation functions, as in Searching for Activation Functions.

Ramachandran, Zoph & Le (2017), "Searching for Activation Functions", arXiv 1710.05941.
Their core unit is ``b(u₁(x), u₂(x))``; two units make the function (their Figure 1)::

    y₁ = b₁(u₁(x), u₂(x))
    f(x) = b₂(u₃(y₁), u₄(x))

Unary functions: ``x``, ``−x``, ``|x|``, ``x²``, ``x³``, ``√|x|``, ``exp(x)``,
``sin(x)``, ``σ(x)``, ``tanh(x)``, ``max(x, 0)``, ``min(x, 0)``, ``0``, ``1``. Binary
functions: ``x₁ + x₂``, ``x₁·x₂``, ``x₁ − x₂``, ``max(x₁, x₂)``, ``min(x₁, x₂)``,
``σ(x₁)·x₂`` and keep-left ``x₁`` (our addition: with ``b₂ = x₁`` and ``u₃ = x`` the
second unit is skipped, so one-unit functions such as Swish ``x·σ(x)`` are codes of the
same length; :data:`KNOWN_ACTIVATIONS`). ``√|x|`` is ``√(|x| + 1e-12)`` so its derivative
is finite at 0.

Codes are integer vectors of length 6 (:data:`ACTIVATIONS`); :func:`activation` turns
any code, concrete or traced, into a function, so a batch of activations trains under
one ``jax.vmap``. Unchosen branches are fed a safe input (:func:`~mamlx.search.grammar.
choose`), so gradients stay finite; an activation that overflows on its own inputs
makes its child run diverge, which gets the worst reward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mamlx.search.grammar import SearchSpace, binary_text, check_code, choose, encode, paren
from mamlx.types import Array

__all__ = ["ACTIVATIONS", "KNOWN_ACTIVATIONS", "activation", "activation_formula"]

_UNARY: dict[str, tuple[Callable[[Array], Array], str, int]] = {
    # token: (function, text with {} for the argument, precedence of the result)
    "x": (lambda x: x, "{}", 0),
    "-x": (jnp.negative, "−{}", 1),
    "|x|": (jnp.abs, "|{}|", 3),
    "x^2": (jnp.square, "{}²", 3),
    "x^3": (lambda x: x * x * x, "{}³", 3),
    "sqrt|x|": (lambda x: jnp.sqrt(jnp.abs(x) + 1e-12), "√|{}|", 3),
    "exp": (jnp.exp, "exp({})", 3),
    "sin": (jnp.sin, "sin({})", 3),
    "sigmoid": (jax.nn.sigmoid, "σ({})", 3),
    "tanh": (jnp.tanh, "tanh({})", 3),
    "max0": (jax.nn.relu, "max({}, 0)", 3),  # ReLU: derivative 0 at 0 (not max's 1/2)
    "min0": (lambda x: -jax.nn.relu(-x), "min({}, 0)", 3),
    "0": (jnp.zeros_like, "0", 3),
    "1": (jnp.ones_like, "1", 3),
}
_BINARY: dict[str, tuple[Callable[[Array, Array], Array], str]] = {
    "add": (jnp.add, "{} + {}"),
    "mul": (jnp.multiply, "{}·{}"),
    "sub": (jnp.subtract, "{} − {}"),
    "max": (jnp.maximum, "max({}, {})"),
    "min": (jnp.minimum, "min({}, {})"),
    "sigmoid_mul": (lambda a, b: jax.nn.sigmoid(a) * b, "σ({})·{}"),
    "keep_left": (lambda a, b: a, "{}"),
}
_UNS = tuple(_UNARY)
_BINS = tuple(_BINARY)


def _unary_text(u: str, text: str, prec: int) -> tuple[str, int]:
    _, template, out_prec = _UNARY[u]
    if u == "x":
        return text, prec
    if u in ("0", "1"):
        return template, 3
    if u == "-x":
        return "−" + paren(text, prec, 2), 1
    if u in ("x^2", "x^3"):
        return template.format(paren(text, prec, 2)), 3
    return template.format(text), out_prec


def _binary_text(b: str, left: tuple[str, int], right: tuple[str, int]) -> tuple[str, int]:
    shared = binary_text(b, left, right)
    if shared is not None:
        return shared
    (a, _), (c, pc) = left, right
    if b == "sigmoid_mul":
        return f"σ({a})·{paren(c, pc, 1)}", 2
    return _BINARY[b][1].format(a, c), 3


def activation_formula(code: Any) -> str:
    """The activation of a concrete code as a formula in ``x``.

    Ramachandran, Zoph & Le (2017), "Searching for Activation Functions".

    Args:
      code: a code of :data:`ACTIVATIONS` (6 integer token ids).

    Returns:
      ``"f(x) = …"``, e.g. ``"f(x) = σ(x)·x"`` for Swish.

    Raises:
      ValueError: a malformed code (the message names the bad token).

    Example:
      >>> activation_formula(KNOWN_ACTIVATIONS["swish"])
      'f(x) = x·σ(x)'
    """
    u1, u2, b1, u3, u4, b2 = check_code(ACTIVATIONS, code, "activation code").tolist()
    x = ("x", 3)
    y1 = _binary_text(_BINS[b1], _unary_text(_UNS[u1], *x), _unary_text(_UNS[u2], *x))
    out = _binary_text(_BINS[b2], _unary_text(_UNS[u3], *y1), _unary_text(_UNS[u4], *x))
    return "f(x) = " + out[0]


ACTIVATIONS = SearchSpace(
    name="activations",
    slots=("u1", "u2", "b1", "u3", "u4", "b2"),
    vocab=(_UNS, _UNS, _BINS, _UNS, _UNS, _BINS),
    formula=activation_formula,
)
"""The activation grammar (6 slots; see the module docstring)."""


def _one_unit(u1: str, u2: str, b: str) -> np.ndarray:
    return encode(ACTIVATIONS, [u1, u2, b, "x", "x", "keep_left"])


#: Named activations as codes (one unit each).
KNOWN_ACTIVATIONS: dict[str, np.ndarray] = {
    "relu": _one_unit("max0", "x", "keep_left"),
    "swish": _one_unit("x", "sigmoid", "mul"),
    "tanh": _one_unit("tanh", "x", "keep_left"),
    "sigmoid": _one_unit("sigmoid", "x", "keep_left"),
    "identity": _one_unit("x", "x", "keep_left"),
}


def _check_traced_code(code: Any) -> Array:
    code = jnp.asarray(code)
    if code.shape != (ACTIVATIONS.length,) or not jnp.issubdtype(code.dtype, jnp.integer):
        raise ValueError(
            f"an activation code is an integer array of shape ({ACTIVATIONS.length},), "
            f"got {code.dtype} {code.shape}"
        )
    return code


def activation(code: Any) -> Callable[[Array], Array]:
    """Any activation code as an elementwise function ``f(x)``.

    ``f(x) = b₂(u₃(b₁(u₁(x), u₂(x))), u₄(x))`` (Ramachandran, Zoph & Le 2017, "Searching
    for Activation Functions"; see :mod:`mamlx.search.activations`). The code may be
    traced (``jax.vmap`` over codes); a concrete code is validated first. Differentiable,
    with finite gradients wherever the chosen functions are finite.

    Args:
      code: int array ``(6,)`` of :data:`ACTIVATIONS`.

    Returns:
      ``f``: maps an array to an array of the same shape.

    Raises:
      ValueError: a malformed concrete code (the message names the bad token).

    Example:
      >>> f = activation(KNOWN_ACTIVATIONS["swish"])
      >>> bool(jnp.allclose(f(jnp.linspace(-3, 3, 7)), jax.nn.swish(jnp.linspace(-3, 3, 7))))
      True
    """
    try:
        code = jnp.asarray(check_code(ACTIVATIONS, code, "activation code"))
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        code = _check_traced_code(code)
    unaries = tuple(f for f, _, _ in _UNARY.values())
    binaries = tuple(f for f, _ in _BINARY.values())

    def f(x: Array) -> Array:
        y1 = choose(code[2], binaries, choose(code[0], unaries, x), choose(code[1], unaries, x))
        return choose(code[5], binaries, choose(code[3], unaries, y1), choose(code[4], unaries, x))

    return f
