"""Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms").

For each task, train from φ for k inner steps to get θ̃; the outer update moves φ
toward the adapted weights:

    φ ← φ + ε · mean_i(θ̃_i − φ)

``meta_grad`` returns the pseudo-gradient g = φ − mean_i θ̃_i, so that any optax
transformation is the outer update: ``optax.sgd(ε)`` gives exactly the rule above,
and ``optax.chain(optax.clip_by_global_norm(...), optax.sgd(schedule))`` composes as
usual (the paper anneals ε linearly to 0).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from mamlx import inner
from mamlx.algorithms.base import (
    MetaLearner,
    check_inner_args,
    map_tasks_mean,
    query_outer_loss,
    support_loss_fn,
)
from mamlx.algorithms.maml import SupportContext, make_predict
from mamlx.episodes import Episode
from mamlx.losses import task_metrics
from mamlx.models.adapter import ApplyFn
from mamlx.types import Params, PRNGKey


def reptile(
    apply_fn: ApplyFn,
    init_fn: Callable[[PRNGKey], Params],
    *,
    inner_opt: inner.InnerOpt,
    inner_steps: int = 5,
    loss_fn: Callable | None = None,
    task_map: str = "vmap",
    transductive: bool = True,
) -> MetaLearner:
    """Reptile meta-learner.

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs``.
      init_fn: ``init_fn(key) -> params``.
      inner_opt: inner learning rate (SGD) or optax transformation (the paper uses
        Adam with β1 = 0, re-initialised per task).
      inner_steps: inner steps k on the support set during meta-training.
      loss_fn: ``loss_fn(pred, y)``; default by target dtype.
      task_map: ``"vmap"``, ``"map"`` or ``"auto"`` over the task batch (:func:`~mamlx.algorithms.map_tasks`).
      transductive: if False, each query example is classified with batch
        statistics of the support set plus that example alone (the paper's
        non-transductive evaluation).

    Returns:
      A :class:`MetaLearner`; its ``meta_grad`` is the pseudo-gradient φ − mean θ̃.

    Example:
      >>> import jax, optax
      >>> from mamlx.experiments import sinusoid_model
      >>> learner = reptile(*sinusoid_model(), inner_opt=0.02, inner_steps=5)
      >>> outer = optax.sgd(0.1)   # φ ← φ + 0.1 (θ̃ − φ)
    """
    check_inner_args(inner_steps, inner_opt, task_map)

    support_loss = support_loss_fn(apply_fn, loss_fn)

    def adapt_params(meta_params, support_x, support_y, steps=None):
        steps = inner_steps if steps is None else steps
        return inner.adapt(
            support_loss, meta_params, support_x, support_y, steps=steps, optimizer=inner_opt
        )[0]

    adapt, predict = make_predict(apply_fn, adapt_params, transductive)

    outer_loss = query_outer_loss(adapt, predict, loss_fn)

    def task_update(meta_params, episode: Episode):
        adapted = adapt_params(meta_params, episode.support_x, episode.support_y)
        state = adapted if transductive else SupportContext(adapted, episode.support_x)
        metrics = task_metrics(predict(state, episode.query_x), episode.query_y, loss_fn)[1]
        return adapted, metrics

    def meta_grad(meta_params, episodes: Episode):
        adapted, metrics = map_tasks_mean(task_update, meta_params, episodes, task_map)
        return jax.tree.map(jnp.subtract, meta_params, adapted), metrics

    return MetaLearner(init_fn, adapt, predict, outer_loss, meta_grad, loss_fn)
