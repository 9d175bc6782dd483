"""The "model pre-training" baseline of Finn et al. (2017), Sec. 5.1.

One model is trained on all tasks at once, minimising the task losses at φ
itself (no adaptation inside the objective):

    min_φ  Σ_i L_{T_i}(φ)

At test time it is fine-tuned with the same inner SGD as MAML, which is exactly
the contrast the course draws: performance now versus potential after training.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from mamlx import inner
from mamlx.algorithms.base import MetaLearner, gradient_learner
from mamlx.algorithms.gradient_based import check_inner_args, support_loss_fn
from mamlx.episodes import Episode
from mamlx.losses import task_metrics
from mamlx.models.adapter import ApplyFn
from mamlx.types import Params, PRNGKey


def pretrain(
    apply_fn: ApplyFn,
    init_fn: Callable[[PRNGKey], Params],
    *,
    inner_lr: float,
    inner_steps: int = 1,
    loss_fn: Callable | None = None,
    task_map: str = "vmap",
) -> MetaLearner:
    """Pre-training on all tasks, fine-tuned by SGD at test time.

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs``.
      init_fn: ``init_fn(key) -> params``.
      inner_lr: test-time fine-tuning step size.
      inner_steps: default number of test-time fine-tuning steps.
      loss_fn: ``loss_fn(pred, y)``; default by target dtype.
      task_map: ``"vmap"``, ``"map"`` or ``"auto"`` over the task batch (:func:`~mamlx.algorithms.map_tasks`).

    Returns:
      A :class:`MetaLearner` whose outer loss is the loss on the task's support and
      query data at the shared parameters.
    """
    check_inner_args(inner_steps, inner_lr, task_map)

    support_loss = support_loss_fn(apply_fn, loss_fn)

    def adapt(meta_params, support_x, support_y, steps=None, key=None):
        del key  # deterministic fine-tuning
        steps = inner_steps if steps is None else steps
        params, _ = inner.adapt(
            support_loss, meta_params, support_x, support_y, steps=steps, optimizer=inner_lr
        )
        return params

    def outer_loss(meta_params, episode: Episode, key=None):
        del key  # deterministic
        x = jnp.concatenate([episode.support_x, episode.query_x])
        y = jnp.concatenate([episode.support_y, episode.query_y])
        return task_metrics(apply_fn(meta_params, x), y, loss_fn)

    return gradient_learner(init_fn, adapt, apply_fn, outer_loss, task_map, loss_fn)
