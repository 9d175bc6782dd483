"""MAML and first-order MAML (Finn, Abbeel & Levine, ICML 2017).

Meta-objective over tasks T_i with support/query data:

    min_θ  Σ_i L_query(θ_i'),   θ_i' = θ − α ∇_θ L_support(θ)   (K inner steps)

The exact meta-gradient for one step is (I − α ∇²L_support(θ)) ∇L_query(θ');
``jax.grad`` computes it by differentiating through ``jax.grad``. First-order
MAML drops the Hessian term and uses ∇L_query(θ') directly.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from mamlx import inner
from mamlx.algorithms.base import (
    MetaLearner,
    gradient_learner,
    map_tasks_mean,
    query_outer_loss,
    resolve_task_map,
)
from mamlx.algorithms.gradient_based import (
    SupportContext,
    check_inner_args,
    make_predict,
    support_loss_fn,
)
from mamlx.losses import task_metrics
from mamlx.models.adapter import ApplyFn
from mamlx.types import Params, PRNGKey

__all__ = ["fomaml", "maml"]


def maml(
    apply_fn: ApplyFn,
    init_fn: Callable[[PRNGKey], Params],
    *,
    inner_lr: float,
    inner_steps: int = 1,
    first_order: bool = False,
    remat: bool = False,
    loss_fn: Callable | None = None,
    task_map: str = "vmap",
    transductive: bool = True,
) -> MetaLearner:
    """Model-Agnostic Meta-Learning.

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs``, e.g. from
        :func:`mamlx.models.adapter`.
      init_fn: ``init_fn(key) -> params``.
      inner_lr: inner SGD step size α.
      inner_steps: inner steps during meta-training (test-time steps are chosen
        by ``adapt(..., steps=)``).
      first_order: first-order MAML (no second derivatives).
      remat: checkpoint each inner step (memory bounded in the number of steps); first-order
        MAML then also keeps its first inner step in the per-task loop (below).
      loss_fn: ``loss_fn(pred, y)``; default cross-entropy for integer labels,
        MSE otherwise.
      task_map: ``"vmap"``, ``"map"`` or ``"auto"`` over the task batch (:func:`~mamlx.algorithms.map_tasks`).
        First-order MAML looping over tasks (``"map"``) takes every task's first inner step
        at once (:func:`mamlx.inner.first_steps`: all tasks start from the meta-parameters),
        so the support sets' first forward and backward pass is alive for all tasks together.
      transductive: batch-norm statistics from the whole query batch (True, as
        the original MAML) or from support ∪ {one query} (False); see
        :func:`mamlx.algorithms.gradient_based.make_predict`.

    Returns:
      A :class:`MetaLearner`.

    Example:
      >>> import jax
      >>> from mamlx.models import MLP, model
      >>> apply_fn, init_fn = model(lambda rngs: MLP((1, 40, 40, 1), rngs=rngs))
      >>> learner = maml(apply_fn, init_fn, inner_lr=0.01)
      >>> params = learner.init(jax.random.PRNGKey(0))
    """
    check_inner_args(inner_steps, inner_lr, task_map)

    support_loss = support_loss_fn(apply_fn, loss_fn)

    def adapt_params(meta_params, support_x, support_y, steps=None, first=None):
        steps = inner_steps if steps is None else steps
        params, _ = inner.adapt(
            support_loss,
            meta_params,
            support_x,
            support_y,
            steps=steps,
            optimizer=inner_lr,
            first_order=first_order,
            remat=remat,
            first=first,
        )
        return params

    adapt, predict = make_predict(apply_fn, adapt_params, transductive)

    outer_loss = query_outer_loss(adapt, predict, loss_fn)

    learner = gradient_learner(init_fn, adapt, predict, outer_loss, task_map, loss_fn)
    if not first_order or remat or inner_steps == 0:
        return learner

    def outer_loss_after(meta_params, task):
        """``outer_loss`` of one task given its first inner step's loss and gradient."""
        episode, first = task
        params = adapt_params(meta_params, episode.support_x, episode.support_y, None, first)
        state = params if transductive else SupportContext(params, episode.support_x)
        return task_metrics(predict(state, episode.query_x), episode.query_y, loss_fn)

    def meta_grad(meta_params, episodes, key=None):
        if resolve_task_map(task_map) != "map":
            return learner.meta_grad(meta_params, episodes, key)
        first = inner.first_steps(support_loss, meta_params, episodes.support_x, episodes.support_y)
        task_grad = jax.grad(outer_loss_after, has_aux=True)
        return map_tasks_mean(task_grad, meta_params, (episodes, first), "map")

    return learner._replace(meta_grad=meta_grad)


def fomaml(apply_fn: ApplyFn, init_fn: Callable[[PRNGKey], Params], **kwargs) -> MetaLearner:
    """First-order MAML: :func:`maml` with ``first_order=True`` (Finn et al. 2017, Sec. 5.2)."""
    return maml(apply_fn, init_fn, first_order=True, **kwargs)
