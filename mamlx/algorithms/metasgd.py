"""Meta-SGD (Li, Zhou, Chen & Li 2017, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning").

MAML with a learned inner learning rate per parameter:

    θ_i' = θ − α ⊙ ∇_θ L_support(θ),   both θ and α meta-learned

Meta-parameters are ``{"params": θ, "lr": α}`` with α shaped like θ.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from mamlx import inner
from mamlx.algorithms.base import MetaLearner, gradient_learner, query_outer_loss
from mamlx.algorithms.gradient_based import check_inner_args, make_predict, support_loss_fn
from mamlx.models.adapter import ApplyFn
from mamlx.types import Params, PRNGKey


def scale_by_learned_lr(lr: Params) -> optax.GradientTransformation:
    """Inner update −α ⊙ g with a per-parameter rate pytree ``lr`` (differentiable in α)."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(grads, state, params=None):
        del params
        return jax.tree.map(lambda a, g: -a * g, lr, grads), state

    return optax.GradientTransformation(init, update)


def metasgd(
    apply_fn: ApplyFn,
    init_fn: Callable[[PRNGKey], Params],
    *,
    inner_lr: float,
    inner_steps: int = 1,
    first_order: bool = False,
    learn_lr: bool = True,
    loss_fn: Callable | None = None,
    task_map: str = "vmap",
    transductive: bool = True,
) -> MetaLearner:
    """Meta-SGD: MAML with meta-learned per-parameter inner learning rates.

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs``.
      init_fn: ``init_fn(key) -> params``.
      inner_lr: initial value of every entry of α.
      inner_steps: inner steps during meta-training.
      first_order: drop second derivatives through the inner gradient.
      learn_lr: if False, α is frozen (its meta-gradient is zero) and the learner
        reduces to MAML with step size ``inner_lr``.
      loss_fn: ``loss_fn(pred, y)``; default by target dtype.
      task_map: ``"vmap"``, ``"map"`` or ``"auto"`` over the task batch (:func:`~mamlx.algorithms.map_tasks`).
      transductive: see :func:`mamlx.algorithms.gradient_based.make_predict`.

    Returns:
      A :class:`MetaLearner` over meta-parameters ``{"params", "lr"}``.
    """
    inner.check_positive(inner_lr, "Meta-SGD's inner_lr (the initial per-parameter rate)")
    check_inner_args(inner_steps, inner_lr, task_map)

    def init(key):
        params = init_fn(key)
        return {"params": params, "lr": jax.tree.map(lambda p: jnp.full_like(p, inner_lr), params)}

    support_loss = support_loss_fn(apply_fn, loss_fn)

    def adapt_params(meta_params, support_x, support_y, steps=None):
        steps = inner_steps if steps is None else steps
        lr = meta_params["lr"] if learn_lr else jax.lax.stop_gradient(meta_params["lr"])
        params, _ = inner.adapt(
            support_loss,
            meta_params["params"],
            support_x,
            support_y,
            steps=steps,
            optimizer=scale_by_learned_lr(lr),
            first_order=first_order,
        )
        return params

    adapt, predict = make_predict(apply_fn, adapt_params, transductive)

    outer_loss = query_outer_loss(adapt, predict, loss_fn)

    return gradient_learner(init, adapt, predict, outer_loss, task_map, loss_fn)
