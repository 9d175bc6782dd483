"""Implicit MAML (Rajeswaran, Finn, Kakade & Levine, NeurIPS 2019).

The inner problem is regularised toward the meta-parameters,

    θ_i*(φ) = argmin_θ  L_support(θ) + λ/2 ‖θ − φ‖²,

and the meta-gradient comes from the implicit function theorem instead of
back-propagating through the inner steps:

    d L_query(θ_i*) / dφ = (I + H/λ)^{-1} ∇L_query(θ_i*),   H = ∇²L_support(θ_i*),

solved with conjugate gradients on Hessian-vector products. Memory is constant in
the number of inner steps (nothing is stored for the backward pass).

The inner solve is a ``jax.custom_vjp`` whose backward pass is that conjugate-gradient
solve, so the implicit gradient is what ``jax.grad`` of anything computed from the
adapted weights gives: ``jax.grad(learner.outer_loss)`` is the task's implicit
meta-gradient, and ``learner.meta_grad`` is simply the gradient of the task-mean
outer loss (:func:`mamlx.algorithms.base.gradient_meta_grad`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from mamlx import inner
from mamlx.algorithms.base import MetaLearner, gradient_meta_grad, query_outer_loss
from mamlx.algorithms.gradient_based import check_inner_args, make_predict, support_loss_fn
from mamlx.episodes import Episode
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
      transductive: see :func:`mamlx.algorithms.gradient_based.make_predict`.

    Returns:
      A :class:`MetaLearner`. Its ``adapt`` solves the proximal inner problem inside a
      ``jax.custom_vjp`` whose backward pass is the implicit gradient: a cotangent
      θ̄ of θ* becomes φ̄ = (I + H/λ)^{-1} θ̄ (``cg_steps`` of conjugate gradients),
      and the support data get −(∂²L_support/∂θ∂data)ᵀ φ̄/λ. So ``jax.grad`` of
      ``outer_loss`` (the query loss after adapting) is the task's implicit
      meta-gradient, and ``meta_grad`` is the gradient of the task-mean
      ``outer_loss``. The backward pass assumes θ* solves the inner problem
      (enough ``inner_steps``); forward-mode ``jax.jvp`` through ``adapt`` is not
      supported (``jax.custom_vjp``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from mamlx.episodes import Episode
      >>> x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 3))  # 2 tasks of 5 shots
      >>> y = x @ jnp.array([1.0, -1.0, 0.5])
      >>> learner = imaml(lambda w, x: x @ w, None, inner_lr=0.1, inner_steps=20, lam=1.0)
      >>> w = jnp.zeros(3)
      >>> grads, metrics = jax.jit(learner.meta_grad)(w, Episode(x, y, x, y))
      >>> task_grad = lambda t: jax.grad(
      ...     lambda w: learner.outer_loss(w, Episode(x[t], y[t], x[t], y[t]))[0])(w)
      >>> bool(jnp.allclose(grads, (task_grad(0) + task_grad(1)) / 2, atol=1e-6))
      True
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

    grad_support = jax.grad(support_loss)

    def prox_solve(meta_params, support_x, support_y, steps):
        # θ*: ``steps`` SGD steps on L_support(θ) + λ/2 ‖θ − φ‖² from θ = φ
        def prox_loss(p, x, y):
            reg = sum(
                jnp.sum(jnp.square(a - b))
                for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(meta_params), strict=True)
            )
            return support_loss(p, x, y) + 0.5 * lam * reg

        params, _ = inner.adapt(
            prox_loss,
            meta_params,
            support_x,
            support_y,
            steps=steps,
            optimizer=inner_lr,
            first_order=True,
        )
        return params

    @functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
    def implicit_solve(meta_params, support_x, support_y, steps):
        return prox_solve(meta_params, support_x, support_y, steps)

    def implicit_solve_fwd(meta_params, support_x, support_y, steps):
        theta = prox_solve(meta_params, support_x, support_y, steps)
        return theta, (theta, support_x, support_y)  # nothing of the inner loop is kept

    def implicit_solve_bwd(steps, residuals, theta_bar):
        # θ* solves F = ∇L_support(θ; x, y) + λ(θ − φ) = 0, so by the implicit function
        # theorem z̄ = −(∂F/∂z)ᵀ (H + λI)^{-1} θ̄ for z = φ, x, y: φ̄ = (I + H/λ)^{-1} θ̄.
        theta, support_x, support_y = residuals

        def matvec(v):  # (I + H/λ) v with H the support-loss Hessian at θ*
            # reverse-over-reverse Hessian-vector product: works with custom_vjp layers
            dot = lambda p: _vdot(grad_support(p, support_x, support_y), v)
            hv = jax.grad(dot)(theta)
            return jax.tree.map(lambda a, b: a + b / lam, v, hv)

        phi_bar = conjugate_gradient(matvec, theta_bar, cg_steps)
        # support data (zero cost when unused: dead code under jit); integer labels: float0
        _, pullback = jax.vjp(lambda x, y: grad_support(theta, x, y), support_x, support_y)
        x_bar, y_bar = pullback(jax.tree.map(lambda a: -a / lam, phi_bar))
        return phi_bar, x_bar, y_bar

    implicit_solve.defvjp(implicit_solve_fwd, implicit_solve_bwd)

    def adapt_params(meta_params, support_x, support_y, steps=None):
        steps = inner.check_steps(inner_steps if steps is None else steps)
        return implicit_solve(meta_params, support_x, support_y, steps)

    adapt, predict = make_predict(apply_fn, adapt_params, transductive)

    query_loss_after_adapt = query_outer_loss(adapt, predict, loss_fn)

    def outer_loss(meta_params, episode: Episode, key=None):
        """Query loss and metrics after the proximal inner loop.

        Its ``jax.grad`` with respect to the meta-parameters is the task's implicit
        meta-gradient (I + H/λ)^{-1} ∇L_query(θ*); ``meta_grad`` is that gradient
        averaged over a task batch.

        Args:
          meta_params: meta-parameters φ.
          episode: one task's support and query data.
          key: accepted and ignored (the inner loop is deterministic).

        Returns:
          ``(loss, metrics)`` on the query set.
        """
        del key
        return query_loss_after_adapt(meta_params, episode)

    meta_grad = gradient_meta_grad(outer_loss, task_map)

    return MetaLearner(init_fn, adapt, predict, outer_loss, meta_grad, loss_fn)
