"""Inner-loop adaptation shared by the optimization-based meta-learners.

The inner loop is a ``lax.scan`` over optax-style updates on the support loss:

    θ_{k+1} = θ_k + update(∇_θ L_support(θ_k))      (plain SGD: θ_k − α ∇L)

Differentiating the result with ``jax.grad`` gives MAML's exact second-order
meta-gradient (Finn et al. 2017); ``first_order=True`` applies
``lax.stop_gradient`` to the inner gradient, which drops the Hessian term
(first-order MAML); ``remat=True`` wraps each inner step in ``jax.checkpoint``
so backward memory grows with one step's activations instead of all of them.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mamlx._checks import check_count
from mamlx.types import Array, Params

LossFn = Callable[[Params, Array, Array], Array]
InnerOpt = float | optax.GradientTransformation


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
) -> tuple[Params, Array]:
    """Adapt ``params`` to one task by ``steps`` optimizer steps on ``loss_fn(params, x, y)``.

    Pure and differentiable: ``jax.grad`` of a function of the returned params
    differentiates through every inner step (exact second order) unless
    ``first_order`` is set.

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
    steps = check_steps(steps)
    opt = as_optimizer(optimizer)
    if steps == 0:
        return params, jnp.zeros((0,), dtype=jnp.result_type(float))

    def step(carry, _):
        p, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
        seen = (loss, grads)
        if first_order:
            seen = jax.lax.stop_gradient(seen)
        updates, opt_state = opt_update(opt, seen[1], opt_state, p, seen[0])
        return (optax.apply_updates(p, updates), opt_state), loss

    if remat:
        step = jax.checkpoint(step)
    (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    return params, losses
