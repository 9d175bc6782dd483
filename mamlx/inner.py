"""The one inner loop, shared by every optimization-based learner and learned optimizer.

:func:`run` is a ``lax.scan`` over optax-style updates on ``loss_fn(params, *args)``:

    θ_{k+1} = θ_k + update(∇_θ L(θ_k), s_k, θ_k)      (plain SGD: θ_k − α ∇L)

Differentiating the result with ``jax.grad`` gives MAML's exact second-order
meta-gradient (Finn et al. 2017); ``first_order=True`` applies
``lax.stop_gradient`` to the loss and gradient fed to the update, which drops the
Hessian term (first-order MAML, and the learned-optimizer papers' choice);
``remat=True`` wraps each inner step in ``jax.checkpoint`` so backward memory grows
with one step's activations instead of all of them. Per-step outputs are recorded in
one place: ``losses[k] = L(θ_k)``, the loss *before* step ``k``, and an optional
``trace(θ_{k+1}, s_{k+1})`` hook, stacked, for anything read *after* step ``k`` (the
meta-learner LSTM's gates, or a MAML++ multi-step query loss).
:func:`adapt`, :func:`mamlx.optimizers.unroll` (:mod:`mamlx.optimizers.truncated_bptt`) and
:func:`mamlx.optimizers.meta_lstm_trajectory` are thin wrappers over :func:`run`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mamlx._checks import check_count
from mamlx.types import Array, Params

LossFn = Callable[[Params, Array, Array], Array]
InnerOpt = float | optax.GradientTransformation
TraceFn = Callable[[Params, Any], Any]


def check_positive(value: Any, name: str) -> float:
    """Validate a finite, positive real number (not a bool) and return it as a float.

    Args:
      value: the argument's value (Python or NumPy scalar).
      name: how the error message names the argument.

    Returns:
      ``float(value)``.

    Raises:
      ValueError: for a bool, a non-number, NaN, ±inf, zero or a negative value.
    """
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be a finite positive number, got the bool {value!r}")
    if not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return float(value)


def as_optimizer(opt: InnerOpt) -> optax.GradientTransformation:
    """Turn an inner learning rate into ``optax.sgd``; pass transformations through.

    Raises:
      ValueError: if ``opt`` is neither an optax transformation nor a finite
        positive number (bools, NaN and inf are rejected).
    """
    if isinstance(opt, optax.GradientTransformation):
        return opt
    if isinstance(opt, (numbers.Real, np.bool_)):
        return optax.sgd(check_positive(opt, "inner learning rate (inner_lr / inner_opt)"))
    raise ValueError(
        f"inner optimizer (inner_lr / inner_opt) must be a learning rate or an optax "
        f"transformation, got {opt!r}"
    )


def opt_update(
    opt: optax.GradientTransformation, grads: Params, state: Any, params: Params, loss: Array
) -> tuple[Params, Any]:
    """``opt.update``, also passing ``value=loss`` to transformations that take extra args.

    Learned rules such as :func:`mamlx.optimizers.meta_lstm_optimizer` read the loss;
    optax's own transformations ignore it.
    """
    if isinstance(opt, optax.GradientTransformationExtraArgs):
        return opt.update(grads, state, params, value=loss)
    return opt.update(grads, state, params)


def check_steps(steps: Any, name: str = "inner steps") -> int:
    """Validate a static (not traced), non-negative integer number of steps.

    Python and NumPy integers pass; floats (even ``3.0``) do not, since loop bounds
    such as ``lax.fori_loop``'s must be integers.
    """
    if isinstance(steps, (float, np.floating)):
        raise ValueError(f"{name} must be an integer >= 0, got {steps!r}")
    return check_count(name, steps, low=0)


def first_order_flag(
    first_order: bool | None, second_order: bool | None, default_first_order: bool
) -> bool:
    """Resolve a wrapper's ``first_order`` / legacy ``second_order`` flags to ``first_order``.

    ``second_order`` is the negation of ``first_order``; give either (or neither, for
    the default), not two that disagree.

    Raises:
      ValueError: if both are given and ``first_order == second_order``.
    """
    if second_order is None:
        return default_first_order if first_order is None else bool(first_order)
    if first_order is not None and bool(first_order) == bool(second_order):
        raise ValueError(
            f"second_order is the negation of first_order; got first_order={first_order!r} "
            f"and second_order={second_order!r}"
        )
    return not second_order


class InnerResult(NamedTuple):
    """What :func:`run` returns.

    Attributes:
      params: θ_K after the ``K = steps`` updates.
      opt_state: the optimizer state s_K after them.
      losses: ``losses[k] = L(θ_k)``, the loss *before* step ``k``; shape ``(K,)``.
      trace: the ``trace`` hook's outputs ``trace(θ_{k+1}, s_{k+1})`` stacked on a leading
        ``K`` axis (read *after* step ``k``), or ``None`` without a hook.
    """

    params: Params
    opt_state: Any
    losses: Array
    trace: Any


def run(
    loss_fn: Callable[..., Array],
    params: Params,
    *args: Any,
    steps: int,
    optimizer: InnerOpt,
    opt_state: Any = None,
    first_order: bool = False,
    remat: bool = False,
    unroll: int | bool = 1,
    trace: TraceFn | None = None,
    step_inputs: Any = None,
    first: tuple[Array, Params] | None = None,
) -> InnerResult:
    """The inner loop: ``steps`` optimizer steps on ``loss_fn(params, *args)``, one ``lax.scan``.

    ``θ_{k+1} = θ_k + update(g_k, s_k, θ_k)`` with ``(L_k, g_k) = (L(θ_k), ∇L(θ_k))``, or
    their ``lax.stop_gradient`` when ``first_order``. The recorded ``losses`` and the
    ``θ_k`` handed to the update are never stopped, so outer losses built from them
    still depend on θ_0 and on the optimizer's (meta-)parameters.

    Args:
      loss_fn: ``loss_fn(params, *args) -> scalar`` (e.g. ``(params, x, y)`` for a
        support set, or ``(params,)`` with the data closed over).
      params: θ_0.
      *args: the data passed to ``loss_fn`` after ``params``.
      steps: number of steps ``K`` (static, >= 0).
      optimizer: a learning rate α (``optax.sgd``) or any optax transformation;
        transformations with extra args also get ``value=L_k`` (:func:`opt_update`).
      opt_state: s_0; ``None`` creates it with ``optimizer.init(params)``.
      first_order: feed ``stop_gradient(L_k)`` and ``stop_gradient(g_k)`` to the update
        (no second derivatives of ``loss_fn``); ``False``: exact second order.
      remat: ``jax.checkpoint`` each step (backward memory of one step).
      unroll: ``lax.scan``'s ``unroll`` (``True``: straight-line code, often faster to
        differentiate for a few steps on CPU, slower to compile).
      trace: optional hook ``trace(θ_{k+1}, s_{k+1}) -> pytree`` called after each step;
        its outputs are stacked, e.g. ``lambda p, s: query_loss(p)`` for a MAML++
        multi-step loss or the meta-LSTM's gates from ``s``.
      step_inputs: optional pytree with a leading axis of length ``steps``; step ``k``
        passes its slice ``x_k`` as the last argument of ``loss_fn(θ_k, *args, x_k)`` and
        of ``trace(θ_{k+1}, s_{k+1}, x_k)`` (``jnp.arange(steps)`` gives per-step
        parameters such as MAML++'s batch-norm weights their step index).
      first: optional ``(L_0, g_0)``, step 0's loss and gradient at ``params``, computed by
        the caller, typically for a whole batch of tasks at once by :func:`first_steps`
        (every task's loop starts from the same meta-parameters, so step 0 of all tasks is
        one vectorized gradient). The loop then evaluates ``loss_fn`` from step 1 on; the
        result is the same function of its inputs (``first_order`` stops them alike).
        Not with ``step_inputs`` (step 0 would need its own inputs); unused when ``steps`` is 0.

    Returns:
      :class:`InnerResult` ``(params, opt_state, losses, trace)``; ``losses[k] = L(θ_k)``.

    Example:
      >>> loss = lambda p, t: (p - t) ** 2
      >>> out = run(loss, 0.0, 1.0, steps=2, optimizer=0.25, trace=lambda p, s: loss(p, 1.0))
      >>> float(out.params), out.losses.tolist(), out.trace.tolist()
      (0.75, [1.0, 0.25], [0.25, 0.0625])
    """
    steps = check_steps(steps)
    opt = as_optimizer(optimizer)
    if opt_state is None:
        opt_state = opt.init(params)

    if first is not None and step_inputs is not None:
        raise ValueError(
            "run: `first` (step 0's loss and gradient) cannot be given with step_inputs"
        )

    def update(p, s, loss, grads, extra):
        seen = jax.lax.stop_gradient((loss, grads)) if first_order else (loss, grads)
        updates, s = opt_update(opt, seen[1], s, p, seen[0])
        p = optax.apply_updates(p, updates)
        return (p, s), (loss, None if trace is None else trace(p, s, *extra))

    def step(carry, x_k):
        extra = () if step_inputs is None else (x_k,)
        loss, grads = jax.value_and_grad(loss_fn)(carry[0], *args, *extra)
        return update(*carry, loss, grads, extra)

    if remat:
        step = jax.checkpoint(step)
    if first is None or steps == 0:
        (new_params, new_state), (losses, traced) = jax.lax.scan(
            step, (params, opt_state), step_inputs, length=steps, unroll=unroll
        )
    else:
        carry, out0 = update(params, opt_state, *first, ())
        (new_params, new_state), rest = jax.lax.scan(
            step, carry, None, length=steps - 1, unroll=unroll
        )
        losses, traced = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), out0, rest)
    if steps == 0:  # hand back the inputs themselves, not scan's copies
        new_params, new_state = params, opt_state
    return InnerResult(new_params, new_state, losses, traced)


def first_steps(
    loss_fn: Callable[..., Array], params: Params, *batched_args: Any
) -> tuple[Array, Params]:
    """Step 0's loss and gradient for a batch of tasks whose loops start from ``params``.

    ``jax.vmap`` of ``jax.value_and_grad(loss_fn)`` over the leading (task) axis of
    ``batched_args``, with ``params`` shared: a layer's product then runs over all tasks'
    inputs at once (one large matrix product instead of one small one per task), and only
    the weight gradients are per task. Hand task ``i``'s slice to :func:`run` or
    :func:`adapt` as ``first=``. Used by first-order MAML and Reptile when they loop over
    tasks (``task_map="map"``): on 2 CPU cores their Omniglot 5-way 1-shot training step
    ran 1.18x and 1.19x faster (``benchmarks/results/throughput_levers_cpu.md``).

    Returns:
      ``(losses, grads)`` with a leading task axis.
    """
    return jax.vmap(jax.value_and_grad(loss_fn), (None,) + (0,) * len(batched_args))(
        params, *batched_args
    )


def adapt(
    loss_fn: LossFn,
    params: Params,
    x: Array,
    y: Array,
    *,
    steps: int,
    optimizer: InnerOpt,
    first_order: bool = False,
    remat: bool = False,
    first: tuple[Array, Params] | None = None,
) -> tuple[Params, Array]:
    """Adapt ``params`` to one task by ``steps`` optimizer steps on ``loss_fn(params, x, y)``.

    :func:`run` with the support set ``(x, y)`` as its ``*args``. Pure and
    differentiable: ``jax.grad`` of a function of the returned params differentiates
    through every inner step (exact second order) unless ``first_order`` is set.

    Args:
      loss_fn: ``loss_fn(params, x, y) -> scalar`` support loss.
      params: initial (meta-learned) parameters θ.
      x: support inputs.
      y: support targets.
      steps: number of inner steps (static, >= 0).
      optimizer: inner learning rate α (plain SGD) or any optax transformation,
        e.g. a learned optimizer or Meta-SGD's per-parameter rates; transformations
        with extra args also get ``value=`` the support loss (:func:`opt_update`).
      first_order: stop gradients through the inner gradient and loss (first-order MAML).
      remat: ``jax.checkpoint`` each inner step to bound backward memory.
      first: optional ``(L_0, g_0)`` at ``params`` on ``(x, y)``, see :func:`run`.

    Returns:
      ``(adapted_params, losses)`` where ``losses[k]`` is the support loss at θ_k
      (shape ``(steps,)``).

    Example:
      >>> import jax.numpy as jnp
      >>> loss = lambda p, x, y: jnp.mean((p * x - y) ** 2)
      >>> p, _ = adapt(loss, 0.0, jnp.ones(3), jnp.ones(3), steps=1, optimizer=0.25)
      >>> float(p)
      0.5
    """
    out = run(
        loss_fn,
        params,
        x,
        y,
        steps=steps,
        optimizer=optimizer,
        first_order=first_order,
        remat=remat,
        first=first,
    )
    return out.params, out.losses
