"""MAML++ (Antoniou, Edwards & Storkey, "How to train your MAML", ICLR 2019).

MAML (:func:`mamlx.algorithms.maml`) with the paper's fixes, each an option of its own,
so that any combination trains and an ablation is one flag; with every option off
:func:`mamlpp` computes what :func:`~mamlx.algorithms.maml` does. With ``K`` inner steps:

1. **Multi-step loss** (MSL, ``multi_step_loss``): the outer loss is Σₖ wₖ L_query(θₖ),
   k = 1..K, the query loss after every inner step, with the paper's importance vector
   (:func:`msl_weights`): uniform at the start, annealed over ``msl_epochs`` epochs
   toward the last step, which alone counts afterwards. ``msl_weights`` fixes w instead.
2. **Derivative-order annealing** (DA, ``first_order_epochs``): first-order
   meta-gradients for the first epochs, exact second order after.
3. **Per-step batch-norm weights and biases** (BNWB, ``per_step_bn``): every
   normalization parameter has K + 1 copies; the forward pass at inner step k (on the
   support set, and on the query set after k steps) uses copy min(k, K). They are
   meta-learned and not changed by the inner loop, as in the authors' code.
   **Per-step batch-norm statistics** and **not sharing running statistics across
   tasks** (the paper's BNRS): mamlx's batch norm normalizes with the statistics of the
   batch it is given, the task's own support or query batch at that step, and keeps no
   running averages, so the statistics are per step and per task by construction; there
   is no option to turn on (``tests/test_mamlpp.py`` checks that one task's outputs do
   not depend on the other tasks of a meta-batch).
4. **Learned per-layer, per-step inner learning rates** (LSLR, ``lslr``): one rate per
   parameter array and inner step, starting at ``inner_lr``, meta-learned.
5. **Cosine annealing of the outer learning rate**: an outer-optimizer setting,
   ``meta_lr_schedule="cosine"`` down to ``min_meta_lr``
   (:func:`mamlx.config.outer_optimizer`).

The meta-parameters are ``{"params": θ}`` plus ``"lr"`` (LSLR rates, one ``(K,)`` array per
parameter array) when ``lslr``; with ``per_step_bn`` the normalization leaves of θ carry a
leading axis of K + 1. MSL and DA follow the training step, which :func:`mamlx.fit` passes
as ``meta_grad(..., step=)``; without a step (a validation loss, say) the outer loss is that
of the end of training: the last step's query loss (or the fixed ``msl_weights``), at the
configured derivative order. The metrics (``loss``, ``accuracy``) are always those of the
query set after the last inner step, as MAML's, whatever the weights of the objective.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mamlx import inner
from mamlx.algorithms.base import MetaLearner, gradient_meta_grad
from mamlx.algorithms.gradient_based import (
    SupportContext,
    check_inner_args,
    make_predict,
    support_loss_fn,
)
from mamlx.losses import task_metrics
from mamlx.models.adapter import ApplyFn
from mamlx.types import Array, Params, PRNGKey

__all__ = ["is_norm_param", "mamlpp", "msl_weights", "per_step_sgd"]

#: The paper's floor on a non-final step's weight, as a fraction of 1/K.
MSL_MIN_FRACTION = 0.03


def is_norm_param(path: tuple) -> bool:
    """Whether a parameter path (``jax.tree_util`` key path) is a normalization layer's:
    one of its keys names a ``norm`` (Flax's ``BatchNorm`` in mamlx's networks sits under
    ``norm`` or ``norms``)."""
    return any("norm" in str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def msl_weights(
    step: Array | int | None, inner_steps: int, msl_epochs: int, epoch_steps: float
) -> Array:
    """The multi-step loss's importance vector w (length K = ``inner_steps``) at a training step.

    Antoniou et al.'s schedule: at epoch e = ⌊step / epoch_steps⌋ < ``msl_epochs`` the
    weight of every step but the last is max(1/K − e·d, 0.03/K) and the last one's
    min(1/K + e·(K−1)·d, 1 − (K−1)·0.03/K), with d = 1 / (K · msl_epochs): uniform at
    e = 0, moving toward the last step. From epoch ``msl_epochs`` on (and for
    ``step=None``) only the last step counts. The weights sum to one.

    Example:
      >>> [round(float(w), 3) for w in msl_weights(0, 5, 10, 500)]
      [0.2, 0.2, 0.2, 0.2, 0.2]
      >>> [round(float(w), 3) for w in msl_weights(2500, 5, 10, 500)]
      [0.1, 0.1, 0.1, 0.1, 0.6]
      >>> [round(float(w), 3) for w in msl_weights(5000, 5, 10, 500)]
      [0.0, 0.0, 0.0, 0.0, 1.0]
    """
    k = inner_steps
    last = jnp.zeros(k).at[-1].set(1.0)
    if step is None or msl_epochs == 0:
        return last
    epoch = jnp.floor(jnp.asarray(step) / epoch_steps)
    decay = 1.0 / k / msl_epochs
    floor = MSL_MIN_FRACTION / k
    early = jnp.maximum(1.0 / k - epoch * decay, floor)
    final = jnp.minimum(1.0 / k + epoch * (k - 1) * decay, 1.0 - (k - 1) * floor)
    annealed = jnp.full(k, early).at[-1].set(final)
    return jnp.where(epoch < msl_epochs, annealed, last)


_schedule = msl_weights  # the factory's ``msl_weights`` argument shadows the name


def per_step_sgd(rates: Params, adapted: Params) -> optax.GradientTransformation:
    """Inner SGD with a rate per parameter array and step: θ ← θ − rates[k] · g at step k.

    Args:
      rates: a pytree like the parameters with a ``(K,)`` array per leaf (step k > K − 1
        uses the last rate).
      adapted: a pytree of booleans like the parameters: leaves marked ``False`` are not
        updated (their update is zero, and their rates get no gradient).
    """

    def init(params):
        del params
        return jnp.zeros((), jnp.int32)

    def update(grads, count, params=None):
        del params

        def one(g, r, on):
            if not on:
                return jnp.zeros_like(g)
            return -r[jnp.minimum(count, r.shape[0] - 1)] * g

        return jax.tree.map(one, grads, rates, adapted), count + 1

    return optax.GradientTransformation(init, update)


def _check_weights(weights: Sequence[float], inner_steps: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (inner_steps,):
        raise ValueError(
            f"msl_weights needs one weight per inner step ({inner_steps}), got {w.shape[0] if w.ndim else w}"
        )
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"msl_weights must be finite and >= 0, got {w.tolist()}")
    if abs(w.sum() - 1.0) > 1e-6:
        raise ValueError(f"msl_weights must sum to one, got {w.tolist()} (sum {w.sum():.6g})")
    return w


def mamlpp(
    apply_fn: ApplyFn,
    init_fn: Callable[[PRNGKey], Params],
    *,
    inner_lr: float,
    inner_steps: int = 5,
    first_order: bool = False,
    multi_step_loss: bool = False,
    msl_epochs: int = 10,
    msl_weights: Sequence[float] | None = None,
    first_order_epochs: int = 0,
    per_step_bn: bool = False,
    lslr: bool = False,
    epoch_steps: float = 500,
    is_norm: Callable[[tuple], bool] = is_norm_param,
    loss_fn: Callable | None = None,
    task_map: str = "vmap",
    transductive: bool = True,
    remat: bool = False,
) -> MetaLearner:
    """MAML++: MAML with the options of Antoniou et al. (2019); see the module docstring.

    Args:
      apply_fn, init_fn: the network, as for :func:`~mamlx.algorithms.maml`.
      inner_lr: inner SGD step size α (LSLR: every rate's starting value).
      inner_steps: inner steps K during meta-training (test: ``adapt(..., steps=)``).
      first_order: first-order meta-gradients throughout (after DA's epochs too).
      multi_step_loss: the annealed multi-step loss (:func:`msl_weights`).
      msl_epochs: epochs over which the multi-step loss anneals to the last step.
      msl_weights: fixed per-step weights (length K, >= 0, summing to one) instead of
        the schedule; implies the multi-step loss.
      first_order_epochs: derivative-order annealing: first order for this many epochs
        (0: off).
      per_step_bn: per-step batch-norm weights and biases (BNWB).
      lslr: learned per-layer, per-step inner learning rates.
      epoch_steps: training steps per epoch (the paper's 500 iterations; need not be a
        whole number), the unit of ``msl_epochs`` and ``first_order_epochs``.
      is_norm: which parameter paths are normalization parameters (per-step BN).
      loss_fn, task_map, transductive, remat: as for :func:`~mamlx.algorithms.maml`.

    Returns:
      A :class:`MetaLearner` over ``{"params": θ[, "lr": rates]}`` whose ``meta_grad`` and
      ``outer_loss`` take ``step=`` (the training step).

    Raises:
      ValueError: for per-step options with 0 inner steps, weights of the wrong length, not
        summing to one or negative, or non-positive epoch lengths.
    """
    check_inner_args(inner_steps, inner_lr, task_map)
    k_steps = inner_steps
    fixed = None if msl_weights is None else _check_weights(msl_weights, k_steps)
    multi = bool(multi_step_loss) or fixed is not None
    options = {
        "multi_step_loss": multi,
        "per_step_bn": per_step_bn,
        "lslr": lslr,
        "first_order_epochs": first_order_epochs,
    }
    used = [name for name, on in options.items() if on]
    if used and k_steps == 0:
        raise ValueError(f"MAML++'s per-step options {used} need inner_steps >= 1, got 0")
    inner.check_steps(msl_epochs, "msl_epochs")
    inner.check_steps(first_order_epochs, "first_order_epochs")
    epoch_steps = inner.check_positive(epoch_steps, "epoch_steps")
    support_loss = support_loss_fn(apply_fn, loss_fn)
    first_order_steps = first_order_epochs * epoch_steps

    def norm_mask(params):
        return jax.tree_util.tree_map_with_path(
            lambda p, _: bool(per_step_bn and is_norm(p)), params
        )

    def init(key):
        params = init_fn(key)
        norms = norm_mask(params)
        if per_step_bn and not any(jax.tree.leaves(norms)):
            raise ValueError(
                "per_step_bn: the network has no normalization parameters (is_norm); turn the "
                "option off (per_step_bn=False, --no-per-step-bn), e.g. for the sine-wave MLP"
            )
        stack = lambda n, x: jnp.broadcast_to(x, (k_steps + 1, *x.shape)) + 0 if n else x
        meta = {"params": jax.tree.map(stack, norms, params)}
        if lslr:
            meta["lr"] = jax.tree.map(
                lambda n, x: jnp.full((k_steps,), 0.0 if n else inner_lr, x.dtype), norms, params
            )
        return meta

    def at_step(params, k):
        """The network's parameters at inner step k: normalization copy min(k, K)."""
        if not per_step_bn:
            return params
        k = jnp.minimum(k, k_steps)
        return jax.tree.map(lambda n, x: x[k] if n else x, norm_mask(params), params)

    def inner_optimizer(meta):
        adapted = jax.tree.map(lambda n: not n, norm_mask(meta["params"]))
        if lslr:
            return per_step_sgd(meta["lr"], adapted)
        if per_step_bn:
            rates = jax.tree.map(lambda _: jnp.full((1,), inner_lr), meta["params"])
            return per_step_sgd(rates, adapted)
        return inner_lr  # plain SGD: MAML's own inner loop

    def state_of(params, support_x):
        return params if transductive else SupportContext(params, support_x)

    def run_inner(meta, support_x, support_y, steps, order, trace=None):
        loss = lambda p, x, y, k: support_loss(at_step(p, k), x, y)
        return inner.run(
            loss,
            meta["params"],
            support_x,
            support_y,
            steps=steps,
            optimizer=inner_optimizer(meta),
            first_order=order,
            remat=remat,
            trace=trace,
            step_inputs=jnp.arange(steps),
        )

    def adapt_params(meta, support_x, support_y, steps=None):
        steps = k_steps if steps is None else inner.check_steps(steps)
        out = run_inner(meta, support_x, support_y, steps, first_order)
        return at_step(out.params, steps)

    adapt, predict = make_predict(apply_fn, adapt_params, transductive)

    def task_loss(meta, episode, weights, order):
        """(loss, metrics) of one task; ``weights`` None: the last step's query loss."""
        query = lambda params: task_metrics(
            predict(state_of(params, episode.support_x), episode.query_x), episode.query_y, loss_fn
        )
        if weights is None:
            out = run_inner(meta, episode.support_x, episode.support_y, k_steps, order)
            return query(at_step(out.params, k_steps))
        trace = lambda p, s, k: query(at_step(p, k + 1))
        out = run_inner(meta, episode.support_x, episode.support_y, k_steps, order, trace)
        losses, metrics = out.trace
        return jnp.dot(weights.astype(losses.dtype), losses), jax.tree.map(lambda m: m[-1], metrics)

    def weights_at(step):
        if fixed is not None:
            return jnp.asarray(fixed)
        if not multi:
            return None
        return _schedule(step, k_steps, msl_epochs, epoch_steps)

    def outer_loss(meta_params, episode, key=None, step=None, order=None):
        del key  # deterministic
        order = first_order if order is None else order
        return task_loss(meta_params, episode, weights_at(step), order)

    def meta_grad(meta_params, episodes, key=None, step=None):
        del key

        def grads(order):
            loss = partial(outer_loss, step=step, order=order)
            return gradient_meta_grad(loss, task_map)(meta_params, episodes)

        if first_order_steps and not first_order and step is not None:
            return jax.lax.cond(step < first_order_steps, lambda: grads(True), lambda: grads(False))
        return grads(first_order)

    return MetaLearner(init, adapt, predict, outer_loss, meta_grad, loss_fn)
