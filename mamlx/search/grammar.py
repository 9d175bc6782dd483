"""Search spaces as fixed-length grammars: a program is one integer token per slot.

Bello, Zoph, Vasudevan & Le (2017), "Neural Optimizer Search with Reinforcement Learning",
ICML, and Ramachandran, Zoph & Le (2017), "Searching for Activation Functions", describe
their programs as a controller's choices, one per step: operands, unary functions,
binary functions. Here every such choice has its own *slot* with its own vocabulary, so
every integer vector whose entries are in range is a valid program (a *code*), and a
batch of programs is a ``(B, L)`` integer array that ``jax.vmap`` maps over.

A program is run by computing every candidate of a slot and keeping the chosen one
(:func:`choose`), never by Python branching, so codes may be traced values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from mamlx.types import Array

__all__ = ["SearchSpace", "check_code", "choose", "decode", "encode"]


class SearchSpace(NamedTuple):
    """A fixed-length grammar: one vocabulary of token names per slot.

    Attributes:
      name: short name (``"update_rules"``, ``"activations"``).
      slots: slot names, e.g. ``("op1", "op2", "u1", "u2", "b1", ...)``.
      vocab: ``vocab[i]`` is the tuple of token names slot ``i`` may take; token id ``k``
        of slot ``i`` is ``vocab[i][k]``.
      formula: ``formula(code) -> str``, the program as a readable formula.
    """

    name: str
    slots: tuple[str, ...]
    vocab: tuple[tuple[str, ...], ...]
    formula: Callable[[Any], str]

    @property
    def vocab_sizes(self) -> tuple[int, ...]:
        """Number of tokens of each slot."""
        return tuple(len(v) for v in self.vocab)

    @property
    def length(self) -> int:
        """Tokens per program."""
        return len(self.slots)

    @property
    def size(self) -> int:
        """Number of distinct codes (the product of the vocabulary sizes)."""
        return int(np.prod(self.vocab_sizes, dtype=np.int64))


def check_code(space: SearchSpace, code: Any, what: str = "code") -> np.ndarray:
    """Validate a concrete code of ``space`` and return it as an int32 numpy array.

    Args:
      space: the grammar.
      code: a sequence of ``space.length`` integer token ids (list, numpy or concrete
        JAX array).
      what: how the error message names the argument.

    Returns:
      ``np.ndarray`` of int32, shape ``(space.length,)``.

    Raises:
      ValueError: wrong shape, a non-integer entry, or a token id out of its slot's range;
        the message names the position, the slot and the offending token.

    Example:
      >>> space = SearchSpace("toy", ("a", "b"), (("x", "y"), ("p", "q", "r")), str)
      >>> check_code(space, [1, 2]).tolist()
      [1, 2]
      >>> check_code(space, [1, 5])
      Traceback (most recent call last):
      ...
      ValueError: code[1] = 5 is not a token of slot 'b' (toy): valid ids are 0..2 (p, q, r)
    """
    arr = np.asarray(code)
    if arr.shape != (space.length,):
        raise ValueError(
            f"{what} of the {space.name} grammar must have shape ({space.length},) "
            f"(slots {', '.join(space.slots)}), got shape {arr.shape}: {arr.tolist()!r}"
        )
    for i, (token, names) in enumerate(zip(arr.tolist(), space.vocab, strict=True)):
        if isinstance(token, bool) or not float(token).is_integer():
            raise ValueError(
                f"{what}[{i}] = {token!r} is not an integer token id of slot "
                f"{space.slots[i]!r} ({space.name})"
            )
        if not 0 <= int(token) < len(names):
            raise ValueError(
                f"{what}[{i}] = {int(token)} is not a token of slot {space.slots[i]!r} "
                f"({space.name}): valid ids are 0..{len(names) - 1} ({', '.join(names)})"
            )
    return arr.astype(np.int32)


def encode(space: SearchSpace, tokens: Sequence[str]) -> np.ndarray:
    """Turn token names (one per slot) into a code.

    Args:
      space: the grammar.
      tokens: ``space.length`` names, ``tokens[i]`` from ``space.vocab[i]``.

    Returns:
      int32 code of shape ``(space.length,)``.

    Raises:
      ValueError: wrong number of tokens or a name that slot does not have (named).

    Example:
      >>> space = SearchSpace("toy", ("a", "b"), (("x", "y"), ("p", "q", "r")), str)
      >>> encode(space, ["y", "p"]).tolist()
      [1, 0]
    """
    tokens = list(tokens)
    if len(tokens) != space.length:
        raise ValueError(
            f"the {space.name} grammar takes {space.length} tokens "
            f"({', '.join(space.slots)}), got {len(tokens)}: {tokens!r}"
        )
    ids = []
    for i, (tok, names) in enumerate(zip(tokens, space.vocab, strict=True)):
        if tok not in names:
            raise ValueError(
                f"token {tok!r} at position {i} is not in slot {space.slots[i]!r} "
                f"({space.name}); choose one of {', '.join(names)}"
            )
        ids.append(names.index(tok))
    return np.asarray(ids, np.int32)


def decode(space: SearchSpace, code: Any) -> tuple[str, ...]:
    """Token names of a concrete code (validated with :func:`check_code`).

    Example:
      >>> space = SearchSpace("toy", ("a", "b"), (("x", "y"), ("p", "q", "r")), str)
      >>> decode(space, [1, 0])
      ('y', 'p')
    """
    code = check_code(space, code)
    return tuple(names[t] for names, t in zip(space.vocab, code.tolist(), strict=True))


def choose(
    index: Array, fns: Sequence[Callable[..., Array]], *args: Array, safe: float | None = 1.0
) -> Array:
    """``fns[index](*args)`` for a (possibly traced, batched) integer ``index``.

    Every branch is computed, then the chosen one kept by ``jnp.where``; unchosen branches
    see ``safe`` instead of their arguments (the "double where"), so an unchosen
    ``exp`` that would overflow or a ``√|x|`` at 0 never sends ``inf · 0 = NaN`` into a
    gradient of the chosen branch.

    Args:
      index: integer scalar (or array broadcastable to the branch outputs).
      fns: the branches; each maps ``*args`` to an array of the broadcast shape.
      *args: arguments of the branches.
      safe: what unchosen branches get instead of ``args`` (a point where every branch
        is finite with a finite derivative); ``None`` passes ``args`` to every branch
        (enough where nothing is differentiated).

    Returns:
      The chosen branch's output; an out-of-range ``index`` gives zeros.

    Example:
      >>> import jax
      >>> fns = (jnp.exp, jnp.negative)
      >>> choose(jnp.asarray(1), fns, jnp.array([1.0, 2.0])).tolist()
      [-1.0, -2.0]
      >>> jax.grad(lambda x: choose(jnp.asarray(1), (jnp.exp, jnp.sin), x))(1000.0)
      Array(0.562..., dtype=float32, weak_type=True)
    """
    out = None
    for k, fn in enumerate(fns):
        on = index == k
        if safe is None:  # forward only: nothing to protect
            masked = list(args)
        else:
            masked = [jnp.where(on, a, jnp.asarray(safe, jnp.result_type(a))) for a in args]
        y = fn(*masked)
        out = jnp.where(on, y, jnp.zeros_like(y)) if out is None else jnp.where(on, y, out)
    assert out is not None, "choose needs at least one branch"
    return out


def paren(text: str, prec: int, below: int) -> str:
    """``text`` in parentheses when its precedence ``prec`` is at most ``below`` (formulas)."""
    return f"({text})" if prec <= below else text


def binary_text(b: str, left: tuple[str, int], right: tuple[str, int]) -> tuple[str, int] | None:
    """A formula's text and precedence for the binary functions both grammars share
    (``keep_left``, ``add``, ``sub``, ``mul``); ``None`` for any other ``b``.

    Example:
      >>> binary_text("mul", ("a + b", 1), ("c", 3))
      ('(a + b)·c', 2)
    """
    (a, pa), (c, pc) = left, right
    if b == "keep_left":
        return a, pa
    if b == "add":
        return f"{a} + {c}", 1
    if b == "sub":
        return f"{a} − {paren(c, pc, 1)}", 1
    if b == "mul":
        return f"{paren(a, pa, 1)}·{paren(c, pc, 1)}", 2
    return None
