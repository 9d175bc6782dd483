"""Implicit MAML (Rajeswaran, Finn, Kakade & Levine, NeurIPS 2019).

The inner problem is regularised toward the meta-parameters,

    θ_i*(φ) = argmin_θ  L_support(θ) + λ/2 ‖θ − φ‖²,

and the meta-gradient comes from the implicit function theorem instead of
back-propagating through the inner steps:

    d L_query(θ_i*) / dφ = (I + H/λ)^{-1} ∇L_query(θ_i*),   H = ∇²L_support(θ_i*),

solved with conjugate gradients on Hessian-vector products. Memory is constant in
the number of inner steps (nothing is stored for the backward pass).

The meta-gradient is ``learner.meta_grad`` (the implicit one above). ``learner.outer_loss``
is for evaluation and metrics only: the inner loop starts from and is anchored to
``stop_gradient(φ)``, so ``jax.grad(learner.outer_loss)`` is exactly zero, not the
meta-gradient.
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


def _vdot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def conjugate_gradient(matvec: Callable, b: Params, steps: int) -> Params:
    """``steps`` iterations of conjugate gradients for ``A x = b`` on pytrees, from x = 0.

    A plain ``lax.fori_loop`` (no early exit), so it vmaps over tasks and
    differentiates like any other JAX code. ``A`` must be symmetric positive definite.
    """

    def div(num, den):  # num / den, 0 where den == 0 (converged)
        safe = jnp.where(den == 0, 1.0, den)
        return jnp.where(den == 0, 0.0, num / safe)

    def body(_, carry):
        x, r, p, rs = carry
        ap = matvec(p)
        alpha = div(rs, _vdot(p, ap))
        x = jax.tree.map(lambda xi, pi: xi + alpha * pi, x, p)
        r = jax.tree.map(lambda ri, ai: ri - alpha * ai, r, ap)
        rs_new = _vdot(r, r)
        beta = div(rs_new, rs)
        p = jax.tree.map(lambda ri, pi: ri + beta * pi, r, p)
        return x, r, p, rs_new

    x0 = jax.tree.map(jnp.zeros_like, b)
    return jax.lax.fori_loop(0, steps, body, (x0, b, b, _vdot(b, b)))[0]


def imaml(
    apply_fn: ApplyFn,
    init_fn: Callable[[PRNGKey], Params],
    *,
    inner_lr: float,
    inner_steps: int = 10,
    lam: float = 1.0,
    cg_steps: int = 5,
    loss_fn: Callable | None = None,
    task_map: str = "vmap",
    transductive: bool = True,
) -> MetaLearner:
    """Implicit MAML with a proximal inner loop and a conjugate-gradient meta-gradient.

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs``.
      init_fn: ``init_fn(key) -> params``.
      inner_lr: inner SGD step size on the regularised support loss.
      inner_steps: inner steps (memory does not grow with them).
      lam: regularisation strength λ toward the meta-parameters.
      cg_steps: conjugate-gradient iterations for (I + H/λ) g = ∇L_query.
      loss_fn: ``loss_fn(pred, y)``; default by target dtype.
      task_map: ``"vmap"``, ``"map"`` or ``"auto"`` over the task batch (:func:`~mamlx.algorithms.map_tasks`).
      transductive: see :func:`mamlx.algorithms.maml.make_predict`.

    Returns:
      A :class:`MetaLearner` whose ``meta_grad`` is the implicit meta-gradient,
      averaged over the task batch. Its ``outer_loss`` (query loss after the inner
      loop) is for evaluation and metrics only: its gradient with respect to the
      meta-parameters is exactly zero (the inner loop is anchored to
      ``stop_gradient(φ)``), so train with ``meta_grad``, never with
      ``jax.grad(outer_loss)``.
    """
    check_inner_args(inner_steps, inner_lr, task_map)
    cg_steps = inner.check_steps(cg_steps, "cg_steps")
    if cg_steps < 1:
        raise ValueError(
            f"cg_steps must be >= 1 (zero conjugate-gradient iterations give an all-zero "
            f"meta-gradient), got {cg_steps}"
        )
    lam = inner.check_positive(lam, "lam")

    support_loss = support_loss_fn(apply_fn, loss_fn)

    def adapt_params(meta_params, support_x, support_y, steps=None):
        steps = inner_steps if steps is None else steps
        anchor = jax.lax.stop_gradient(meta_params)

        def prox_loss(p, x, y):
            reg = sum(
                jnp.sum(jnp.square(a - b))
                for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(anchor), strict=True)
            )
            return support_loss(p, x, y) + 0.5 * lam * reg

        params, _ = inner.adapt(
            prox_loss,
            anchor,
            support_x,
            support_y,
            steps=steps,
            optimizer=inner_lr,
            first_order=True,
        )
        return params

    adapt, predict = make_predict(apply_fn, adapt_params, transductive)

    query_loss_after_adapt = query_outer_loss(adapt, predict, loss_fn)

    def outer_loss(meta_params, episode: Episode):
        """Query loss and metrics after the proximal inner loop, for evaluation only.

        Not differentiable in the meta-parameters: ``jax.grad`` of it is exactly
        zero because the inner loop is anchored to ``stop_gradient(meta_params)``.
        The iMAML meta-gradient is ``meta_grad`` (implicit function theorem).

        Args:
          meta_params: meta-parameters φ.
          episode: one task's support and query data.

        Returns:
          ``(loss, metrics)`` on the query set.
        """
        return query_loss_after_adapt(meta_params, episode)

    def task_grad(meta_params, episode: Episode):
        sx, sy = episode.support_x, episode.support_y
        theta = adapt_params(meta_params, sx, sy)
        wrap = (lambda p: p) if transductive else (lambda p: SupportContext(p, sx))

        def query_loss(p):
            return task_metrics(predict(wrap(p), episode.query_x), episode.query_y, loss_fn)

        (_, metrics), g_query = jax.value_and_grad(query_loss, has_aux=True)(theta)
        grad_support = lambda p: jax.grad(support_loss)(p, sx, sy)

        def matvec(v):  # (I + H/λ) v with H the support-loss Hessian at θ*
            # reverse-over-reverse Hessian-vector product: works with custom_vjp layers
            dot = lambda p: sum(
                jnp.vdot(a, b)
                for a, b in zip(jax.tree.leaves(grad_support(p)), jax.tree.leaves(v), strict=True)
            )
            hv = jax.grad(dot)(theta)
            return jax.tree.map(lambda a, b: a + b / lam, v, hv)

        return conjugate_gradient(matvec, g_query, cg_steps), metrics

    def meta_grad(meta_params, episodes: Episode):
        return map_tasks_mean(task_grad, meta_params, episodes, task_map)

    return MetaLearner(init_fn, adapt, predict, outer_loss, meta_grad, loss_fn)
