"""Meta-training learned optimizers by truncated backpropagation through time.

Andrychowicz et al. (2016): the optimizer ``g_φ`` is trained to minimise the optimizee
losses along its own trajectory,

    L(φ) = E_f [ Σ_{t=1}^{T} f(θ_t) ],   θ_{t+1} = θ_t + g_φ(∇f(θ_t), state_t),

unrolled for a horizon (100 steps) cut into truncations (20 steps); the optimizee
parameters and the optimizer state are carried from one truncation to the next and
``φ`` is updated with Adam after each. With ``second_order=False`` the optimizee
gradients are treated as constants (``stop_gradient``), as in the paper.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from mamlx import inner
from mamlx._checks import check_count
from mamlx.optimizers.tasks import TaskFamily
from mamlx.types import Array, Params, PRNGKey

OptFactory = Callable[[Any], optax.GradientTransformation]


@dataclass(frozen=True)
class UnrollConfig:
    """Settings of truncated-unroll meta-training (paper defaults where given).

    Attributes:
      horizon: optimizee steps per task (100 in Andrychowicz et al.).
      truncation: steps per meta-gradient (20 in Andrychowicz et al.).
      num_tasks: optimizee tasks per meta-batch.
      second_order: differentiate through the optimizee's gradients (False in the paper).
      reduction: ``"mean"`` or ``"sum"`` of the losses along a truncation.
    """

    horizon: int = 100
    truncation: int = 20
    num_tasks: int = 16
    second_order: bool = False
    reduction: str = "mean"

    def __post_init__(self):
        for name in ("horizon", "truncation", "num_tasks"):  # NumPy integers too, kept as int
            object.__setattr__(self, name, check_count(f"UnrollConfig.{name}", getattr(self, name)))
        if self.horizon % self.truncation:
            raise ValueError(
                f"UnrollConfig.horizon ({self.horizon}) must be a multiple of "
                f"truncation ({self.truncation})"
            )
        _check_reduction(self.reduction)


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def unroll(
    opt: optax.GradientTransformation,
    loss_fn: Callable[[Params], Array],
    params: Params,
    opt_state: Any,
    num_steps: int,
    second_order: bool | None = None,
    *,
    first_order: bool | None = None,
) -> tuple[Params, Any, Array]:
    """Run ``num_steps`` optimizer steps on ``loss_fn`` with the one inner loop.

    ``θ_{t+1} = θ_t + opt.update(∇f(θ_t), s_t, θ_t)``; transformations taking extra
    args (e.g. the Ravi–Larochelle rule) also get ``value=f(θ_t)``. A wrapper over
    :func:`mamlx.inner.run`, whose losses are read *before* each step: here they are
    shifted by one, ``[f(θ_1), …, f(θ_{T−1})]`` from the scan, then ``f(θ_T)``.

    Args:
      opt: any optax transformation (learned or hand-designed).
      loss_fn: ``params -> scalar``.
      params: ``θ_0``.
      opt_state: optimizer state for ``θ_0``.
      num_steps: number of steps ``T``.
      second_order: the negation of ``first_order`` (kept for existing callers);
        default ``True``.
      first_order: if True, ``∇f(θ_t)`` and ``f(θ_t)`` fed to the optimizer are
        ``stop_gradient``-ed (the losses returned still depend on ``θ_t``); give this
        or ``second_order``, not both disagreeing. Default ``False``.

    Returns:
      ``(θ_T, s_T, losses)`` with ``losses[t] = f(θ_{t+1})``, shape ``(T,)``.

    Example:
      >>> opt = optax.sgd(0.1)
      >>> p = {"x": jnp.ones(2)}
      >>> _, _, losses = unroll(opt, lambda p: jnp.sum(p["x"] ** 2), p, opt.init(p), 5)
      >>> losses.shape
      (5,)
    """
    num_steps = check_count("num_steps", num_steps, low=0)
    first_order = inner.first_order_flag(first_order, second_order, default_first_order=False)
    out = inner.run(
        loss_fn,
        params,
        steps=num_steps,
        optimizer=opt,
        opt_state=opt_state,
        first_order=first_order,
    )
    if num_steps == 0:
        return out.params, out.opt_state, out.losses
    # inner.run records f(θ_t) before step t; this API returns f(θ_{t+1}) after it.
    losses = jnp.concatenate([out.losses[1:], loss_fn(out.params)[None]])
    return out.params, out.opt_state, losses


def truncated_meta_loss(
    meta_params: Any,
    opt_factory: OptFactory,
    family: TaskFamily,
    params: Params,
    opt_state: Any,
    tasks: Any,
    num_steps: int,
    second_order: bool = False,
    reduction: str = "mean",
) -> tuple[Array, tuple[Params, Any, Array]]:
    """Meta-loss of one truncation over a batch of tasks (leading task axis).

    ``L = mean_tasks reduce_{t=1..T} f(θ_t)`` where ``reduce`` is mean or sum.

    Args:
      meta_params: optimizer meta-parameters ``φ`` (differentiated).
      opt_factory: ``φ -> optax transformation`` (e.g. ``lstm_optimizer``).
      family: the task family (its ``loss`` is used).
      params, opt_state, tasks: batched optimizee state and tasks.
      num_steps: truncation length ``T``.
      second_order: see :func:`unroll`.
      reduction: ``"mean"`` or ``"sum"``.

    Returns:
      ``(meta_loss, (params_T, opt_state_T, losses (tasks, T)))``.

    Example:
      >>> # jax.grad(truncated_meta_loss, has_aux=True)(mp, lstm_optimizer, fam, ...)
    """
    _check_reduction(reduction)
    opt = opt_factory(meta_params)

    def one(p, s, task):
        loss_fn = lambda q: family.loss(q, task)
        return unroll(opt, loss_fn, p, s, num_steps, first_order=not second_order)

    params, opt_state, losses = jax.vmap(one)(params, opt_state, tasks)
    per_task = jnp.mean(losses, -1) if reduction == "mean" else jnp.sum(losses, -1)
    return jnp.mean(per_task), (params, opt_state, losses)


def sample_problems(
    family: TaskFamily, opt: optax.GradientTransformation, key: PRNGKey, num_tasks: int
) -> tuple[Any, Params, Any]:
    """Sample ``num_tasks`` tasks, their initial params and optimizer states (batched)."""
    k_task, k_init = jax.random.split(key)
    tasks = jax.vmap(family.sample)(jax.random.split(k_task, num_tasks))
    params = jax.vmap(family.init)(jax.random.split(k_init, num_tasks), tasks)
    return tasks, params, jax.vmap(opt.init)(params)


def make_meta_train_step(
    opt_factory: OptFactory,
    family: TaskFamily,
    meta_optimizer: optax.GradientTransformation,
    config: UnrollConfig = UnrollConfig(),
) -> Callable:
    """Build one jitted meta-training step: a full horizon in truncations.

    The step samples ``config.num_tasks`` fresh tasks, then ``lax.scan``s over
    ``horizon // truncation`` truncations; each computes ``∇_φ`` of
    :func:`truncated_meta_loss`, applies ``meta_optimizer`` (e.g. Adam) to ``φ`` and
    carries the optimizee params and optimizer state into the next truncation.

    Args:
      opt_factory: ``φ -> optax transformation``.
      family: task family to train on.
      meta_optimizer: optax optimizer for ``φ`` (Adam in the paper).
      config: :class:`UnrollConfig`.

    Returns:
      ``step(meta_params, meta_opt_state, key) -> (meta_params, meta_opt_state, metrics)``
      with ``metrics = {"meta_loss": mean over truncations, "final_loss": f(θ_T)}``.

    Example:
      >>> from mamlx.optimizers import init_lstm_optimizer, lstm_optimizer, quadratic_family
      >>> fam = quadratic_family()
      >>> meta_opt = optax.adam(1e-3)
      >>> step = make_meta_train_step(lstm_optimizer, fam, meta_opt, UnrollConfig(20, 5, 2))
      >>> mp = init_lstm_optimizer(jax.random.key(0))
      >>> mp, ms, metrics = step(mp, meta_opt.init(mp), jax.random.key(1))
    """
    num_truncations = config.horizon // config.truncation
    grad_fn = jax.value_and_grad(truncated_meta_loss, has_aux=True)

    @jax.jit
    def step(meta_params, meta_opt_state, key):
        tasks, params, opt_state = sample_problems(
            family, opt_factory(meta_params), key, config.num_tasks
        )

        def truncation(carry, _):
            mp, ms, p, s = carry
            (loss, (p, s, losses)), g = grad_fn(
                mp,
                opt_factory,
                family,
                p,
                s,
                tasks,
                config.truncation,
                config.second_order,
                config.reduction,
            )
            upd, ms = meta_optimizer.update(g, ms, mp)
            mp = optax.apply_updates(mp, upd)
            return (mp, ms, p, s), (loss, jnp.mean(losses[:, -1]))

        (meta_params, meta_opt_state, _, _), (losses, finals) = lax.scan(
            truncation, (meta_params, meta_opt_state, params, opt_state), None, num_truncations
        )
        metrics = {"meta_loss": jnp.mean(losses), "final_loss": finals[-1]}
        return meta_params, meta_opt_state, metrics

    return step


def evaluate_optimizer(
    opt: optax.GradientTransformation,
    family: TaskFamily,
    key: PRNGKey,
    num_tasks: int,
    num_steps: int,
) -> Array:
    """Loss curves of ``opt`` on ``num_tasks`` tasks drawn with ``key`` (held out if unseen).

    Args:
      opt: any optax transformation.
      family: task family.
      key: PRNG key for tasks and initial params.
      num_tasks: number of tasks.
      num_steps: optimizer steps.

    Returns:
      Losses of shape ``(num_tasks, num_steps + 1)``: ``f(θ_0), …, f(θ_T)``.

    Example:
      >>> from mamlx.optimizers import quadratic_family
      >>> curves = evaluate_optimizer(optax.adam(0.1), quadratic_family(), jax.random.key(0), 8, 50)
      >>> curves.shape
      (8, 51)
    """
    tasks, params, opt_state = sample_problems(family, opt, key, num_tasks)

    def one(p, s, task):
        loss_fn = lambda q: family.loss(q, task)
        _, _, losses = unroll(opt, loss_fn, p, s, num_steps, first_order=True)
        return jnp.concatenate([loss_fn(p)[None], losses])

    return jax.vmap(one)(params, opt_state, tasks)
