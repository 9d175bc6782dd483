"""Search space 1: update rules, as in Neural Optimizer Search.

Bello, Zoph, Vasudevan & Le (2017), "Neural Optimizer Search with Reinforcement Learning",
ICML. An update rule is ``Δw = λ · b(u₁(op₁), u₂(op₂))``; the weights move by ``−Δw``.
Bello et al. let the output of one such group be an operand of a later one. We use two
groups (ten tokens), the second of which may read the first's output ``h``::

    h  = b₁(u₁(op₁), u₂(op₂))                 op₁, op₂ ∈ OPERANDS
    Δw = λ · b₂(u₃(op₃), u₄(op₄))             op₃, op₄ ∈ OPERANDS ∪ {h}

Operands: ``g``, ``g²``, ``sign(g)``, ``m̂``, ``v̂``, ``sign(m̂)``, ``1``, ``ε`` and
``sign(g)·sign(m̂)``, where ``m̂`` and ``v̂`` are Adam's bias-corrected running means of
``g`` and ``g²`` (decays ``b1 = 0.9``, ``b2 = 0.999``) and ``ε ~ N(0, noise_std²)`` is
fresh noise every step. The operand ``sign(g)·sign(m̂)`` (our addition) makes both of
Bello et al.'s named discoveries two-group codes (:data:`KNOWN_RULES`):

    PowerSign  exp(sign(g)·sign(m̂))·g          (one group: h unused)
    AddSign    (1 + sign(g)·sign(m̂))·g         (h = 1 + sign(g)·sign(m̂), then h·g)

Unary functions: identity, negation, ``exp``, ``log|x|`` (as ``log(|x| + 1e-8)``, so a
coordinate whose gradient is exactly 0 does not make ``−inf``), ``√|x|``, ``sign``,
``clip(x, 1)`` (to ``[−1, 1]``). Binary functions: ``+``, ``−``, ``·``, ``/`` and
keep-left (``b(x, y) = x``). Division is safe at ``0/0``, which is 0 (a coordinate
without signal does not move, so ``m̂/√v̂`` works for dead units); ``x/0`` for ``x ≠ 0``
is ``±inf``, and so are overflows: such a program's child run diverges and it gets the
worst reward (:mod:`mamlx.search.child`).

A code is an integer vector of length 10 (:data:`UPDATE_RULES`); any code, concrete or
traced, becomes an optax transformation with :func:`as_optax`, so ``jax.vmap`` over codes
trains a whole batch of rules at once: every operand and function is computed and the
chosen ones are kept (:func:`mamlx.search.grammar.choose`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from mamlx.search.grammar import SearchSpace, binary_text, check_code, choose, encode, paren
from mamlx.types import Array, Params

__all__ = [
    "KNOWN_RULES",
    "UPDATE_RULES",
    "RuleState",
    "apply_rule",
    "as_optax",
    "formula",
]

LOG_EPS = 1e-8

#: operand token -> (pretty text, precedence: 3 atom, 2 product, 1 sum)
_OPERANDS: dict[str, tuple[str, int]] = {
    "g": ("g", 3),
    "g^2": ("g²", 3),
    "sign(g)": ("sign(g)", 3),
    "m": ("m̂", 3),
    "v": ("v̂", 3),
    "sign(m)": ("sign(m̂)", 3),
    "1": ("1", 3),
    "noise": ("ε", 3),
    "sign(g)*sign(m)": ("sign(g)·sign(m̂)", 2),
}
_UNARY: dict[str, Callable[[Array], Array]] = {
    "identity": lambda x: x,
    "neg": jnp.negative,
    "exp": jnp.exp,
    "log_abs": lambda x: jnp.log(jnp.abs(x) + LOG_EPS),
    "sqrt_abs": lambda x: jnp.sqrt(jnp.abs(x)),
    "sign": jnp.sign,
    "clip": lambda x: jnp.clip(x, -1.0, 1.0),
}
_UNARY_TEXT = {
    "identity": "{}",
    "neg": "−{}",
    "exp": "exp({})",
    "log_abs": "log|{}|",
    "sqrt_abs": "√|{}|",
    "sign": "sign({})",
    "clip": "clip({}, 1)",
}


def _safe_div(x: Array, y: Array) -> Array:
    """``x / y`` with ``0 / 0 = 0``; ``x / 0`` is ``±inf`` for ``x ≠ 0``."""
    zero = x == 0
    return jnp.where(zero, jnp.zeros_like(x), x / jnp.where(zero, jnp.ones_like(y), y))


_BINARY: dict[str, Callable[[Array, Array], Array]] = {
    "add": jnp.add,
    "sub": jnp.subtract,
    "mul": jnp.multiply,
    "div": _safe_div,
    "keep_left": lambda x, y: x,
}
_OPS1 = tuple(_OPERANDS)
_OPS2 = (*_OPS1, "h")
_UNS = tuple(_UNARY)
_BINS = tuple(_BINARY)


def _unary_text(u: str, text: str, prec: int) -> tuple[str, int]:
    if u == "identity":
        return text, prec
    if u == "neg":
        return "−" + paren(text, prec, 2), 1
    return _UNARY_TEXT[u].format(text), 3


def _binary_text(b: str, left: tuple[str, int], right: tuple[str, int]) -> tuple[str, int]:
    shared = binary_text(b, left, right)
    if shared is not None:
        return shared
    (a, pa), (c, pc) = left, right
    return f"{paren(a, pa, 1)}/{paren(c, pc, 2)}", 2  # divide


def formula(code: Any) -> str:
    """The update rule of a concrete code as a formula (unused tokens are left out).

    Bello et al. (2017), "Neural Optimizer Search with Reinforcement Learning", ICML.

    Args:
      code: a code of :data:`UPDATE_RULES` (10 integer token ids).

    Returns:
      ``"Δw = λ·…"``, e.g. ``"Δw = λ·exp(sign(g)·sign(m̂))·g"`` for PowerSign.

    Raises:
      ValueError: a malformed code (the message names the bad token).

    Example:
      >>> formula(KNOWN_RULES["addsign"])
      'Δw = λ·(1 + sign(g)·sign(m̂))·g'
    """
    c = check_code(UPDATE_RULES, code).tolist()
    o1, o2, u1, u2, b1, o3, o4, u3, u4, b2 = c

    def operand(op: str, h: tuple[str, int] | None) -> tuple[str, int]:
        return h if op == "h" else _OPERANDS[op]

    h = _binary_text(
        _BINS[b1],
        _unary_text(_UNS[u1], *_OPERANDS[_OPS1[o1]]),
        _unary_text(_UNS[u2], *_OPERANDS[_OPS1[o2]]),
    )
    out = _binary_text(
        _BINS[b2],
        _unary_text(_UNS[u3], *operand(_OPS2[o3], h)),
        _unary_text(_UNS[u4], *operand(_OPS2[o4], h)),
    )
    return "Δw = λ·" + paren(*out, 1)


UPDATE_RULES = SearchSpace(
    name="update_rules",
    slots=("op1", "op2", "u1", "u2", "b1", "op3", "op4", "u3", "u4", "b2"),
    vocab=(_OPS1, _OPS1, _UNS, _UNS, _BINS, _OPS2, _OPS2, _UNS, _UNS, _BINS),
    formula=formula,
)
"""The update-rule grammar (10 slots; see the module docstring)."""

_SKIP = ["g", "g", "identity", "identity", "keep_left"]  # a first group nothing reads

#: Named rules as codes: plain gradient descent, sign descent, momentum (m̂), Adam's
#: direction without its ε (m̂/√v̂), and Bello et al.'s PowerSign and AddSign (e = 2.718…
#: and 1 as their bases α).
KNOWN_RULES: dict[str, np.ndarray] = {
    "sgd": encode(UPDATE_RULES, [*_SKIP, "g", "1", "identity", "identity", "keep_left"]),
    "sign": encode(UPDATE_RULES, [*_SKIP, "sign(g)", "1", "identity", "identity", "keep_left"]),
    "momentum": encode(UPDATE_RULES, [*_SKIP, "m", "1", "identity", "identity", "keep_left"]),
    "adam": encode(UPDATE_RULES, [*_SKIP, "m", "v", "identity", "sqrt_abs", "div"]),
    "powersign": encode(UPDATE_RULES, [*_SKIP, "sign(g)*sign(m)", "g", "exp", "identity", "mul"]),
    "addsign": encode(
        UPDATE_RULES,
        ["1", "sign(g)*sign(m)", "identity", "identity", "add", "h", "g", "identity", "identity"]
        + ["mul"],
    ),
}


def apply_rule(code: Array, g: Array, m_hat: Array, v_hat: Array, noise: Array) -> Array:
    """The direction ``b₂(u₃(op₃), u₄(op₄))`` of a code, elementwise (``Δw = λ ·`` this).

    ``code`` may be traced (``jax.vmap`` over a batch of codes): every operand, unary and
    binary function is computed and the chosen ones kept.

    Args:
      code: int array ``(10,)`` of :data:`UPDATE_RULES`.
      g: gradient; m_hat, v_hat: bias-corrected running means of ``g`` and ``g²``;
        noise: ``ε``; all of one shape.

    Returns:
      The direction, shaped like ``g`` (``±inf`` / NaN for invalid programs).

    Example:
      >>> g = jnp.array([0.5, -2.0])
      >>> apply_rule(jnp.asarray(KNOWN_RULES["sign"]), g, g, g * g, 0 * g).tolist()
      [1.0, -1.0]
    """
    code = jnp.asarray(code)
    sg, sm = jnp.sign(g), jnp.sign(m_hat)
    values = (g, g * g, sg, m_hat, v_hat, sm, jnp.ones_like(g), noise, sg * sm)

    def pick(index: Array, vals: tuple[Array, ...]) -> Array:
        out = vals[0]
        for k, v in enumerate(vals[1:], start=1):
            out = jnp.where(index == k, v, out)
        return out

    unaries, binaries = tuple(_UNARY.values()), tuple(_BINARY.values())

    def group(o1, o2, u1, u2, b, vals):
        x = choose(u1, unaries, pick(o1, vals), safe=None)
        y = choose(u2, unaries, pick(o2, vals), safe=None)
        return choose(b, binaries, x, y, safe=None)

    h = group(*code[:5], values)
    return group(*code[5:], (*values, h))


class RuleState(NamedTuple):
    """State of a searched update rule (:func:`as_optax`).

    Attributes:
      count: steps taken (int32 scalar).
      mu, nu: running means of ``g`` and ``g²`` (not bias-corrected), shaped like params.
      key: PRNG key of the noise operand ``ε``.
    """

    count: Array
    mu: Params
    nu: Params
    key: Array


def _check_traced_code(code: Any) -> Array:
    code = jnp.asarray(code)
    if code.shape != (UPDATE_RULES.length,) or not jnp.issubdtype(code.dtype, jnp.integer):
        raise ValueError(
            f"an update-rule code is an integer array of shape ({UPDATE_RULES.length},), "
            f"got {code.dtype} {code.shape}"
        )
    return code


def as_optax(
    code: Any,
    learning_rate: float | Array | optax.Schedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    noise_std: float = 0.01,
    seed: int = 0,
) -> optax.GradientTransformation:
    """Any update-rule code as an optax transformation (updates are ``−Δw``).

    ``Δw = λ · b₂(u₃(op₃), u₄(op₄))`` (Bello et al. 2017, "Neural Optimizer Search with
    Reinforcement Learning", ICML; see :mod:`mamlx.search.update_rules`); like optax's
    own optimizers, the returned updates are to be *added* (``optax.apply_updates``). The
    code may be traced, so ``jax.vmap(lambda c: train(as_optax(c, lr)))(codes)`` trains a
    batch of rules at once; a concrete code is validated first.

    Args:
      code: int array ``(10,)`` of :data:`UPDATE_RULES`.
      learning_rate: ``λ`` (a number, a traced scalar or an optax schedule of the step).
      b1, b2: decays of the running means ``m̂`` and ``v̂`` (bias-corrected, as in Adam).
      noise_std: standard deviation of the noise operand ``ε``.
      seed: seed of the noise operand's key.

    Returns:
      ``optax.GradientTransformation`` whose state is :class:`RuleState`.

    Raises:
      ValueError: a concrete code that is malformed (wrong length, non-integer or
        out-of-range token: the message names the position, slot and token).

    Example:
      >>> opt = as_optax(KNOWN_RULES["powersign"], 0.1)
      >>> params = {"w": jnp.array([1.0, -1.0])}
      >>> updates, state = opt.update({"w": jnp.array([0.5, 0.5])}, opt.init(params))
      >>> updates["w"].tolist()  # −0.1·e·0.5: sign(g) = sign(m̂) on the first step
      [-0.1359..., -0.1359...]
    """
    try:
        code = jnp.asarray(check_code(UPDATE_RULES, code, "update-rule code"))
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        code = _check_traced_code(code)

    def init_fn(params: Params) -> RuleState:
        zeros = jax.tree.map(jnp.zeros_like, params)
        return RuleState(jnp.zeros((), jnp.int32), zeros, zeros, jax.random.key(seed))

    def update_fn(updates, state, params=None):
        del params
        count = state.count + 1
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, updates)
        t = count.astype(jnp.float32)
        c1, c2 = 1 - b1**t, 1 - b2**t
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        # One flat vector for all leaves: the rule's graph is built once, not per leaf.
        g, unravel = ravel_pytree(updates)
        m, v = ravel_pytree(mu)[0], ravel_pytree(nu)[0]
        eps = noise_std * jax.random.normal(jax.random.fold_in(state.key, count), g.shape, g.dtype)
        d = apply_rule(code, g, m / c1.astype(m.dtype), v / c2.astype(v.dtype), eps)
        return unravel(-lr * d), RuleState(count, mu, nu, state.key)

    return optax.GradientTransformation(init_fn, update_fn)
