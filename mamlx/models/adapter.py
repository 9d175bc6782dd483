"""Use Flax NNX modules through a pure functional API.

Meta-learning differentiates through whole training runs, so algorithms take a
plain ``apply_fn(params, x)`` and a params pytree (plain nested dicts). This
module turns any NNX module into that pair: ``nnx.split`` once outside ``jit``,
``nnx.merge(..., copy=True)`` inside the pure function (without ``copy=True``
BatchNorm fails under grad-of-grad).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from mamlx.types import Array, Params

ApplyFn = Callable[[Params, Array], Array]


def functional(module: nnx.Module) -> tuple[ApplyFn, Params]:
    """Split an NNX module into a pure ``apply_fn`` and a plain-dict params pytree.

    Only ``nnx.Param`` variables become trainable params; every other variable
    (batch-norm running statistics, RNG counters) is frozen into ``apply_fn`` as
    it was at the time of the call. Modules that should use batch statistics must
    be built in training mode (e.g. ``use_running_average=False``).

    Args:
      module: a Flax NNX module mapping a batch of inputs to outputs.

    Returns:
      ``(apply_fn, params)`` where ``apply_fn(params, x)`` is pure and jittable
      and ``params`` is a nested ``dict`` of arrays. Further arguments of
      ``apply_fn`` go to the module's ``__call__``, or to another of its methods
      named by ``method=`` (as in Flax Linen's ``apply``).

    Example:
      >>> from flax import nnx
      >>> apply_fn, params = functional(nnx.Linear(1, 3, rngs=nnx.Rngs(0)))
      >>> apply_fn(params, jax.numpy.ones((2, 1))).shape
      (2, 3)
    """
    graphdef, param_state, rest = nnx.split(module, nnx.Param, ...)
    params = nnx.to_pure_dict(param_state)

    def apply_fn(p: Params, x: Array, *args, method: str = "__call__", **kwargs) -> Array:
        state = jax.tree.map(lambda v: v, param_state)
        nnx.replace_by_pure_dict(state, p)
        module = nnx.merge(graphdef, state, rest, copy=True)
        return getattr(module, method)(x, *args, **kwargs)

    return apply_fn, params


def count_params(params: Params) -> int:
    """Total number of scalars in a params pytree."""
    return sum(int(a.size) for a in jax.tree.leaves(params))


def tree_cast(tree: Any, dtype: Any) -> Any:
    """Cast every floating leaf of a pytree to ``dtype`` (e.g. float64 for tests)."""
    return jax.tree.map(
        lambda a: a.astype(dtype) if jax.numpy.issubdtype(a.dtype, jax.numpy.floating) else a, tree
    )


def model(make_module: Callable[[nnx.Rngs], nnx.Module]) -> tuple[ApplyFn, Callable]:
    """Build ``(apply_fn, init_fn)`` from a module factory.

    Args:
      make_module: ``make_module(rngs) -> nnx.Module``.

    Returns:
      ``apply_fn(params, x)`` as in :func:`functional` and ``init_fn(key) ->
      params`` that initializes fresh parameters from a PRNG key.

    Example:
      >>> from mamlx.models import MLP
      >>> apply_fn, init_fn = model(lambda rngs: MLP((1, 40, 40, 1), rngs=rngs))
      >>> params = init_fn(jax.random.PRNGKey(0))
      >>> apply_fn(params, jax.numpy.zeros((3, 1))).shape
      (3, 1)
    """
    apply_fn, _ = functional(make_module(nnx.Rngs(0)))

    def init_fn(key) -> Params:
        return functional(make_module(nnx.Rngs(key)))[1]

    return apply_fn, init_fn
