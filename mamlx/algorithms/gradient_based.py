"""Pieces shared by the optimization-based learners (MAML, ANIL, Meta-SGD, Reptile, ...).

Their task state is a set of adapted parameters ``θ' = adapt_params(φ, support)``
from an inner loop (:func:`mamlx.inner.adapt`) on the support loss
(:func:`support_loss_fn`); :func:`make_predict` turns ``adapt_params`` into the
``adapt``/``predict`` pair of a :class:`~mamlx.algorithms.MetaLearner`, transductive
or not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mamlx import inner
from mamlx.algorithms.base import check_task_map
from mamlx.losses import task_metrics
from mamlx.models.adapter import ApplyFn
from mamlx.types import Array, Params

__all__ = ["SupportContext", "check_inner_args", "make_predict", "support_loss_fn"]


class SupportContext(NamedTuple):
    """Adapted params plus the support inputs, for non-transductive prediction."""

    params: Params
    support_x: Array


def make_predict(
    apply_fn: ApplyFn, adapt_params: Callable, transductive: bool = True
) -> tuple[Callable, Callable]:
    """``(adapt, predict)`` for a learner whose task state is adapted parameters.

    Transductive (the original MAML and Reptile setting): the query batch is
    predicted at once, so batch norm uses the query batch's statistics.
    Non-transductive: each query example is predicted together with the support set
    (batch statistics of support ∪ {x}), so predictions do not depend on the other
    queries (Nichol et al. 2018, Sec. 6).

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs``.
      adapt_params: ``adapt_params(meta_params, support_x, support_y, steps) ->
        params``, the deterministic inner loop.
      transductive: see above.

    Returns:
      ``(adapt, predict)``: ``adapt(meta_params, support_x, support_y, steps=None,
      key=None)`` (the key is accepted and ignored: the inner loop is deterministic)
      returns the adapted params (transductive) or a :class:`SupportContext`.

    Example:
      >>> import jax.numpy as jnp
      >>> apply_fn = lambda p, x: x * p
      >>> adapt, predict = make_predict(apply_fn, lambda p, x, y, steps: p + 1.0, False)
      >>> state = adapt(jnp.float32(1.0), jnp.ones((2, 1)), jnp.ones((2, 1)))
      >>> predict(state, jnp.full((3, 1), 3.0)).tolist()
      [[6.0], [6.0], [6.0]]
    """

    def adapt_transductive(meta_params, support_x, support_y, steps=None, key=None):
        del key  # deterministic inner loop
        return adapt_params(meta_params, support_x, support_y, steps)

    if transductive:
        return adapt_transductive, apply_fn

    def adapt(meta_params, support_x, support_y, steps=None, key=None):
        del key  # deterministic inner loop
        return SupportContext(adapt_params(meta_params, support_x, support_y, steps), support_x)

    def predict(state: SupportContext, x):
        one = lambda xi: apply_fn(state.params, jnp.concatenate([state.support_x, xi[None]]))[-1]
        return jax.vmap(one)(x)

    return adapt, predict


def check_inner_args(inner_steps: int, inner_opt: Any, task_map: str) -> None:
    """Validate the arguments every optimization-based learner shares (clear errors early)."""
    inner.check_steps(inner_steps)
    inner.as_optimizer(inner_opt)
    check_task_map(task_map)


def support_loss_fn(apply_fn: Callable, loss_fn: Callable | None = None) -> Callable:
    """``support_loss(params, x, y)``: the task loss of ``apply_fn(params, x)``.

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs``.
      loss_fn: ``loss_fn(pred, y)``; default cross-entropy for integer labels, MSE otherwise.

    Returns:
      ``support_loss(params, x, y) -> scalar``, the inner loop's objective.
    """

    def support_loss(params, x, y):
        return task_metrics(apply_fn(params, x), y, loss_fn)[0]

    return support_loss
