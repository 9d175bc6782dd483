"""ANIL, "almost no inner loop" (Raghu, Raghu, Bengio & Vinyals, ICLR 2020).

MAML where the inner loop adapts only the head (the last layer); the body is
meta-learned through the outer loss but fixed within each task:

    h_i' = h − α ∇_h L_support(body, h),   min_{body, h} Σ_i L_query(body, h_i')
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from mamlx import inner
from mamlx.algorithms.base import MetaLearner, gradient_learner, query_outer_loss
from mamlx.algorithms.gradient_based import check_inner_args, make_predict
from mamlx.losses import task_metrics
from mamlx.models.adapter import ApplyFn
from mamlx.types import Params, PRNGKey


def head_by_path(*prefix) -> Callable[[tuple], bool]:
    """Head selector: leaves whose key path starts with ``prefix``.

    Example: ``head_by_path("head")`` for :class:`~mamlx.models.Conv4`,
    ``head_by_path("layers", 2)`` for the last layer of a 1-40-40-1
    :class:`~mamlx.models.MLP`.
    """

    def is_head(path):
        keys = [getattr(k, "key", getattr(k, "idx", None)) for k in path[: len(prefix)]]
        return len(keys) == len(prefix) and all(a == b for a, b in zip(keys, prefix, strict=True))

    return is_head


def partition(params: Params, is_head: Callable[[tuple], bool]):
    """Split params into ``(head_leaves, merge)`` where ``merge(head_leaves) -> params``."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(params)
    mask = [bool(is_head(p)) for p, _ in paths]
    if not any(mask):
        raise ValueError("the head selector matched no parameters")
    leaves = [v for _, v in paths]

    def merge(head):
        it = iter(head)
        return jax.tree_util.tree_unflatten(
            treedef, [next(it) if m else v for m, v in zip(mask, leaves, strict=True)]
        )

    return [v for m, v in zip(mask, leaves, strict=True) if m], merge


def anil(
    apply_fn: ApplyFn,
    init_fn: Callable[[PRNGKey], Params],
    *,
    inner_lr: float,
    inner_steps: int = 1,
    is_head: Callable[[tuple], bool] | None = None,
    first_order: bool = False,
    loss_fn: Callable | None = None,
    task_map: str = "vmap",
    transductive: bool = True,
) -> MetaLearner:
    """ANIL: adapt only the head in the inner loop.

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs``.
      init_fn: ``init_fn(key) -> params``.
      inner_lr: inner SGD step size on the head.
      inner_steps: inner steps during meta-training.
      is_head: ``is_head(key_path) -> bool`` selecting head leaves; default: the
        top-level ``"head"`` entry (as in :class:`~mamlx.models.Conv4`).
      first_order: drop second derivatives.
      loss_fn: ``loss_fn(pred, y)``; default by target dtype.
      task_map: ``"vmap"``, ``"map"`` or ``"auto"`` over the task batch (:func:`~mamlx.algorithms.map_tasks`).
      transductive: see :func:`mamlx.algorithms.gradient_based.make_predict`.

    Returns:
      A :class:`MetaLearner`.
    """
    check_inner_args(inner_steps, inner_lr, task_map)
    is_head = is_head or head_by_path("head")

    def adapt_params(meta_params, support_x, support_y, steps=None):
        steps = inner_steps if steps is None else steps
        head, merge = partition(meta_params, is_head)

        def head_loss(h, x, y):
            return task_metrics(apply_fn(merge(h), x), y, loss_fn)[0]

        head, _ = inner.adapt(
            head_loss,
            head,
            support_x,
            support_y,
            steps=steps,
            optimizer=inner_lr,
            first_order=first_order,
        )
        return merge(head)

    adapt, predict = make_predict(apply_fn, adapt_params, transductive)

    outer_loss = query_outer_loss(adapt, predict, loss_fn)

    return gradient_learner(init_fn, adapt, predict, outer_loss, task_map, loss_fn)
