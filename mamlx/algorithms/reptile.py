"""Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms").

For each task, train from φ for k inner steps to get θ̃; the outer update moves φ
toward the adapted weights:

    φ ← φ + ε · mean_i(θ̃_i − φ)

``meta_grad`` returns the pseudo-gradient g = φ − mean_i θ̃_i, so that any optax
transformation is the outer update: ``optax.sgd(ε)`` gives exactly the rule above,
and ``optax.chain(optax.clip_by_global_norm(...), optax.sgd(schedule))`` composes as
usual (the paper anneals ε linearly to 0).

With ``reset_inner_state=False`` the inner optimizer's state is carried from task to task
through training, as in Nichol et al.'s code (its Adam moments are TensorFlow variables that
the meta-update never restores), and every test task starts from the state training ended
with. The state is then part of the meta-parameters (:class:`CarriedParams`), and the
outer optimizer must be wrapped by :func:`carried_state_outer`.

:func:`reptile_optimizer` is the same algorithm written as one optax transformation
(lookahead-style, Zhang et al. 2019): it is fed one task's gradient per inner step in
a plain optax loop, and every k-th update moves the slow weights φ toward the fast ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mamlx import inner
from mamlx._checks import check_bool, check_count
from mamlx.algorithms.base import (
    MetaLearner,
    map_tasks_mean,
    mean_metrics,
    query_outer_loss,
    resolve_task_map,
)
from mamlx.algorithms.gradient_based import (
    check_inner_args,
    make_predict,
    support_loss_fn,
)
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
    inner_batch: int = 0,
    reset_inner_state: bool = True,
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
        Looping over tasks (``"map"``) on whole support sets (no ``inner_batch``), the first
        inner step of all tasks is one vectorized gradient at the meta-parameters
        (:func:`mamlx.inner.first_steps`), the later steps loop over tasks.
      transductive: if False, each query example is classified with batch
        statistics of the support set plus that example alone (the paper's
        non-transductive evaluation). ``meta_grad``'s metrics (training loss and
        accuracy on the queries, which the update does not use) always predict the
        query batch at once: one forward pass instead of one per query.
      inner_batch: examples per inner step during meta-training: each step takes the next
        ``inner_batch`` examples of a random order of the support set, reshuffled at every
        pass (the paper's minibatches: 5-way, 10 shots, batches of 10, 5 steps make one
        pass over the 50 examples). ``meta_grad`` then needs a key. 0 (default), or at
        least the support size: every step on the whole support set. ``adapt`` (test
        time) always uses the whole support set.
      reset_inner_state: start every task's inner loop from a fresh ``inner_opt`` state
        (default). ``False``: Nichol et al.'s code: the state carries over from task to
        task, the meta-batch's tasks taken in order (a ``lax.scan``, whatever
        ``task_map``), and ``adapt`` starts from the state training reached. The
        meta-parameters are then :class:`CarriedParams` ``(params, inner_state)``; train
        them with ``carried_state_outer(outer)`` (it replaces the state by the one the
        meta-batch ended with). ``meta_grad``'s logged metrics are then the carried
        loop's (task i after tasks 0 … i−1), not the mean of ``outer_loss`` at the
        meta-parameters, so :func:`mamlx.testing.check_meta_learner`'s task-mean check
        does not apply. Measured on Omniglot 5-way 1-shot with the paper's Adam
        (β1 = 0): validation 70.1 % against 57.4 % after 2,500 meta-steps
        (``benchmarks/reptile_adam_state.py``). One device only: a task batch split over
        devices would average the carried states.

    Returns:
      A :class:`MetaLearner`; its ``meta_grad`` is the pseudo-gradient φ − mean θ̃ (with
      ``reset_inner_state=False``, and the inner state's own: old state − new state).

    Example:
      >>> import jax, optax
      >>> from mamlx.datasets import sinusoid_model
      >>> learner = reptile(*sinusoid_model(), inner_opt=0.02, inner_steps=5)
      >>> outer = optax.sgd(0.1)   # φ ← φ + 0.1 (θ̃ − φ)
    """
    check_inner_args(inner_steps, inner_opt, task_map)
    inner_batch = check_count("inner_batch", inner_batch, low=0)
    carry = not check_bool("reset_inner_state", reset_inner_state)
    opt = inner.as_optimizer(inner_opt)

    support_loss = support_loss_fn(apply_fn, loss_fn)

    def run_task(phi, opt_state, support_x, support_y, steps=None, key=None, first=None):
        """The inner loop from ``phi`` (and ``opt_state``; ``None``: a fresh state); ``first``:
        its first step's loss and gradient (:func:`mamlx.inner.first_steps`)."""
        steps = inner_steps if steps is None else steps
        if key is None:
            loss = lambda p: support_loss(p, support_x, support_y)
            return inner.run(
                loss, phi, steps=steps, optimizer=opt, opt_state=opt_state, first=first
            )
        idx = minibatch_indices(key, support_x.shape[0], inner_batch, steps)
        batches = (support_x[idx], support_y[idx])  # (steps, inner_batch, ...)
        step_loss = lambda p, batch: support_loss(p, *batch)
        return inner.run(
            step_loss, phi, steps=steps, optimizer=opt, opt_state=opt_state, step_inputs=batches
        )

    def split(meta_params):
        return (meta_params.params, meta_params.inner_state) if carry else (meta_params, None)

    def adapt_params(meta_params, support_x, support_y, steps=None, key=None):
        return run_task(*split(meta_params), support_x, support_y, steps, key).params

    adapt, predict = make_predict(apply_fn, adapt_params, transductive)

    outer_loss = query_outer_loss(adapt, predict, loss_fn)

    def logged_metrics(adapted, episode: Episode):
        # Logged only (the update does not use the query set): the query batch at once, as
        # the transductive rule, whatever `transductive` says. The other rule costs a forward
        # pass of support ∪ {x} per query: it made the training step 7x slower at Omniglot
        # 5-way, 10 shots and queries (CPU). Validation and test use `adapt`/`predict`.
        return task_metrics(apply_fn(adapted, episode.query_x), episode.query_y, loss_fn)[1]

    def task_update(meta_params, episode: Episode, key=None):
        adapted = adapt_params(meta_params, episode.support_x, episode.support_y, key=key)
        return adapted, logged_metrics(adapted, episode)

    def task_update_after(meta_params, task):
        """``task_update`` given the task's first inner step (loss and gradient)."""
        episode, first = task
        adapted = run_task(meta_params, None, episode.support_x, episode.support_y, first=first)
        return adapted.params, logged_metrics(adapted.params, episode)

    def carried_meta_grad(meta_params: CarriedParams, episodes: Episode, key=None):
        n = episodes.support_x.shape[0]
        keys = None if key is None else jax.random.split(key, n)  # as map_tasks
        zeros = jax.tree.map(jnp.zeros_like, meta_params.params)

        def body(carry_, task):
            total, opt_state = carry_
            episode, k = task
            res = run_task(
                meta_params.params, opt_state, episode.support_x, episode.support_y, key=k
            )
            total = jax.tree.map(jnp.add, total, res.params)
            return (total, res.opt_state), logged_metrics(res.params, episode)

        (total, state), metrics = jax.lax.scan(
            body, (zeros, meta_params.inner_state), (episodes, keys)
        )
        grads = CarriedParams(
            jax.tree.map(lambda p, t: p - t / n, meta_params.params, total),
            jax.tree.map(jnp.subtract, meta_params.inner_state, state),
        )
        return grads, mean_metrics(metrics)

    def meta_grad(meta_params, episodes: Episode, key=None):
        if not 0 < inner_batch < episodes.support_x.shape[1]:
            key = None  # every step on the whole support set: deterministic
        elif key is None:
            raise ValueError(
                f"reptile with inner_batch={inner_batch} (support sets of "
                f"{episodes.support_x.shape[1]}) draws random minibatches: pass meta_grad a key"
            )
        if carry:
            return carried_meta_grad(meta_params, episodes, key)
        if key is None and inner_steps > 0 and resolve_task_map(task_map) == "map":
            # Every task starts from meta_params: their first steps as one vectorized gradient.
            sx, sy = episodes.support_x, episodes.support_y
            tasks = (episodes, inner.first_steps(support_loss, meta_params, sx, sy))
            adapted, metrics = map_tasks_mean(task_update_after, meta_params, tasks, "map")
            return jax.tree.map(jnp.subtract, meta_params, adapted), metrics
        adapted, metrics = map_tasks_mean(task_update, meta_params, episodes, task_map, key)
        return jax.tree.map(jnp.subtract, meta_params, adapted), metrics

    def init_meta_params(key):
        params = init_fn(key)
        return CarriedParams(params, opt.init(params)) if carry else params

    return MetaLearner(init_meta_params, adapt, predict, outer_loss, meta_grad, loss_fn)


class CarriedParams(NamedTuple):
    """Meta-parameters of ``reptile(..., reset_inner_state=False)``.

    Attributes:
      params: the network's meta-parameters φ.
      inner_state: the inner optimizer's state, carried from task to task in training
        and the start of every test task's inner loop.
    """

    params: Params
    inner_state: optax.OptState


def carried_state_outer(outer: optax.GradientTransformation) -> optax.GradientTransformation:
    """The outer optimizer of ``reptile(..., reset_inner_state=False)``: ``outer`` on φ's
    pseudo-gradient, and the inner state set to the one the meta-batch ended with (its
    "gradient" is old − new; the update adds back new − old).

    Example:
      >>> import optax, jax.numpy as jnp
      >>> tx = carried_state_outer(optax.sgd(0.5))
      >>> p = CarriedParams(jnp.ones(2), jnp.zeros(2))
      >>> g = CarriedParams(jnp.ones(2), -jnp.full(2, 3.0))   # new state: 3
      >>> u, _ = tx.update(g, tx.init(p), p)
      >>> optax.apply_updates(p, u)
      CarriedParams(params=Array([0.5, 0.5], dtype=float32), inner_state=Array([3., 3.], dtype=float32))
    """
    replace = optax.GradientTransformation(
        lambda params: optax.EmptyState(),
        lambda grads, state, params=None: (jax.tree.map(jnp.negative, grads), state),
    )

    def labels(params: CarriedParams) -> CarriedParams:
        if not isinstance(params, CarriedParams):
            raise ValueError(
                "carried_state_outer trains reptile(..., reset_inner_state=False), whose "
                f"meta-parameters are CarriedParams; got {type(params).__name__}"
            )
        return CarriedParams(
            jax.tree.map(lambda _: "params", params.params),
            jax.tree.map(lambda _: "state", params.inner_state),
        )

    return optax.partition({"params": outer, "state": replace}, labels)


def minibatch_indices(key: PRNGKey, n: int, batch: int, steps: int) -> jax.Array:
    """``(steps, batch)`` indices into ``n`` examples: consecutive batches of a random order,
    reshuffled at every pass over the ``n`` (without replacement, as Nichol et al.'s code).

    Example:
      >>> idx = minibatch_indices(jax.random.PRNGKey(0), 6, 4, 3)
      >>> idx.shape, sorted(idx.ravel()[:6].tolist()), sorted(idx.ravel()[6:].tolist())
      ((3, 4), [0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5])
    """
    if batch < 1 or batch > n:
        raise ValueError(f"minibatches of {batch} from {n} examples: need 1 <= batch <= n")
    passes = -(-steps * batch // n)
    order = jax.vmap(lambda k: jax.random.permutation(k, n))(jax.random.split(key, passes))
    return order.reshape(-1)[: steps * batch].reshape(steps, batch)


class ReptileState(NamedTuple):
    """State of :func:`reptile_optimizer`.

    Attributes:
      slow: the slow weights φ (the meta-parameters). The params equal them right
        after every ``inner_steps``-th update; in between, the params are the fast
        weights θ of the current task. In a chain, read them with
        ``optax.tree.get(state, "slow")``.
      count: number of updates so far; inner step ``count % inner_steps`` of
        meta-step ``count // inner_steps``.
      inner_state: state of the fast (inner) optimizer (with a leading task axis if
        ``task_axis``).
      outer_state: state of the slow (outer) optimizer.
    """

    slow: Params
    count: jax.Array
    inner_state: optax.OptState
    outer_state: optax.OptState


def reptile_optimizer(
    inner_opt: inner.InnerOpt,
    inner_steps: int,
    outer_opt: optax.ScalarOrSchedule | optax.GradientTransformation,
    *,
    task_axis: bool = False,
    reset_inner_state: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """Reptile as an optax transformation: k fast steps on a task, then one slow step.

    Call ``update`` once per inner step with that step's gradient of the current
    task's loss at ``params`` (the fast weights θ). Each call applies ``inner_opt``;
    every ``inner_steps``-th call instead also moves the slow weights toward the
    adapted ones and resets the fast weights (and, by default, ``inner_opt``'s state)
    to them:

        θ ← θ + inner_opt(∇L_τ(θ))   (k times, from θ = φ),   φ ← φ + ε (θ̃ − φ),   θ ← φ

    where ε is ``outer_opt`` (a number or schedule is ``optax.sgd(ε)``; any optax
    transformation ``outer_opt`` gets the pseudo-gradient φ − θ̃). This is
    :func:`reptile`'s update at a meta-batch of one task: ``reptile_optimizer(inner_opt,
    k, outer_opt)`` over k calls equals one step of ``reptile(..., inner_opt=inner_opt,
    inner_steps=k).meta_grad`` followed by ``outer_opt``. With ``task_axis=True`` the
    params, gradients and fast states carry a leading task axis (one fast copy per
    task, initialised as n copies of φ) and φ moves toward the task mean of θ̃:
    the meta-batch-n update of :func:`reptile`.

    Unlike :func:`reptile`, whose meta-step is a single compiled function, this is
    for plain optax loops (or Lookahead-style training on one stream of tasks). Its
    updates must be applied unchanged, so put clipping or other gradient
    transformations before it: ``optax.chain(optax.clip_by_global_norm(c), tx)``
    clips each inner gradient (over all tasks together if ``task_axis``).

    Args:
      inner_opt: the fast optimizer: a learning rate (SGD) or an optax transformation
        (the paper uses Adam with β1 = 0); extra arguments such as ``value=`` pass through.
      inner_steps: k, inner steps per task (>= 1).
      outer_opt: ε (number or schedule over meta-steps), or an optax transformation
        applied to the pseudo-gradient φ − θ̃.
      task_axis: params and gradients have a leading task (meta-batch) axis.
      reset_inner_state: re-initialise ``inner_opt``'s state at every slow step
        (as :func:`reptile`, one fresh inner optimizer per task).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`ReptileState`; ``update`` needs ``params``.

    References:
      Nichol, Achiam & Schulman, "On First-Order Meta-Learning Algorithms", 2018
      (Algorithm 1); Zhang et al., "Lookahead Optimizer: k steps forward, 1 step
      back", 2019.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> tx = reptile_optimizer(0.1, inner_steps=2, outer_opt=0.5)
      >>> params = jnp.zeros(2)
      >>> state = tx.init(params)
      >>> for target in (jnp.ones(2), jnp.ones(2), -jnp.ones(2), -jnp.ones(2)):
      ...     grads = jax.grad(lambda p: jnp.sum((p - target) ** 2))(params)
      ...     updates, state = tx.update(grads, state, params)
      ...     params = optax.apply_updates(params, updates)
      >>> params.tolist() == optax.tree.get(state, "slow").tolist()  # synced after 2k steps
      True
    """
    if inner.check_steps(inner_steps, "inner_steps") < 1:
        raise ValueError(f"inner_steps must be >= 1, got {inner_steps!r}")
    fast = optax.with_extra_args_support(inner.as_optimizer(inner_opt))
    if isinstance(outer_opt, optax.GradientTransformation):
        outer = outer_opt
    elif callable(outer_opt):
        outer = optax.sgd(outer_opt)
    else:
        outer = optax.sgd(inner.check_positive(outer_opt, "outer_opt (the outer step size ε)"))

    def per_task(fn):
        return jax.vmap(fn) if task_axis else fn

    def init_fn(params):
        slow = jax.tree.map(lambda p: p[0], params) if task_axis else params
        return ReptileState(
            slow=slow,
            count=jnp.zeros([], jnp.int32),
            inner_state=per_task(fast.init)(params),
            outer_state=outer.init(slow),
        )

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("reptile_optimizer needs params (the fast weights) in update()")
        fast_update = lambda g, s, p: fast.update(g, s, p, **extra_args)
        fast_updates, inner_state = per_task(fast_update)(updates, state.inner_state, params)
        adapted = optax.apply_updates(params, fast_updates)  # θ after this inner step

        def slow_step(inner_state, outer_state):
            theta = jax.tree.map(lambda a: jnp.mean(a, 0), adapted) if task_axis else adapted
            pseudo_grad = jax.tree.map(jnp.subtract, state.slow, theta)  # φ − θ̃
            outer_updates, outer_state = outer.update(pseudo_grad, outer_state, state.slow)
            slow = optax.apply_updates(state.slow, outer_updates)
            fast_params = (
                jax.tree.map(lambda s, p: jnp.broadcast_to(s, p.shape), slow, params)
                if task_axis
                else slow
            )
            if reset_inner_state:
                inner_state = per_task(fast.init)(fast_params)
            to_slow = jax.tree.map(
                lambda s, p, u: (s - p).astype(u.dtype), fast_params, params, fast_updates
            )
            return to_slow, slow, inner_state, outer_state

        def fast_step(inner_state, outer_state):
            return fast_updates, state.slow, inner_state, outer_state

        sync = (state.count + 1) % inner_steps == 0
        new_updates, slow, inner_state, outer_state = jax.lax.cond(
            sync, slow_step, fast_step, inner_state, state.outer_state
        )
        return new_updates, ReptileState(slow, state.count + 1, inner_state, outer_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
