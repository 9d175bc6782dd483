"""The one shape every meta-learner has.

A meta-learner is a ``NamedTuple`` of pure functions, in the style of
``optax.GradientTransformation``. One training loop, one evaluator and one CLI
serve all of them:

* ``init(key) -> meta_params``
* ``adapt(meta_params, support_x, support_y, steps=None, key=None) -> task_state``:
  the task-specific predictor (adapted weights, class prototypes, ...).
  ``steps=None`` means the learner's training setting.
* ``predict(task_state, x) -> outputs`` (logits or regression values).
* ``outer_loss(meta_params, episode, key=None) -> (loss, metrics)`` for one task.
* ``meta_grad(meta_params, episodes, key=None) -> (grads, metrics)`` for a batch of
  tasks (leading task axis). For most learners this is ``jax.grad`` of the mean outer
  loss; Reptile returns its pseudo-gradient φ − θ̃ instead, so every learner's
  outer update is an optax transformation applied to ``grads``.
* ``predict_loss(outputs, labels) -> scalar`` (optional field, default ``None``):
  the loss of ``predict``'s outputs that evaluation reports, i.e. the learner's own
  ``loss_fn`` (Relation Networks: the MSE of their scores). ``None``: cross-entropy
  for integer labels, MSE otherwise (:func:`mamlx.losses.default_loss`).

**Keys.** ``key`` is an optional PRNG key for stochastic learners (the
hallucinator's noise); deterministic learners accept it and ignore it, and every
function works without one. ``meta_grad`` gives task ``i`` of the batch the key
``jax.random.split(key, num_tasks)[i]`` (:func:`map_tasks`). :func:`mamlx.fit` passes
``meta_grad`` a key derived from each step's key and :func:`mamlx.evaluate` passes
``adapt`` one per task, both by :func:`learner_key`, so the sampled tasks are the same
as without keys.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mamlx.episodes import Episode
from mamlx.losses import task_metrics
from mamlx.sharding import varying_like
from mamlx.types import Array, Metrics, Params, PRNGKey

TASK_MAPS = ("vmap", "map", "auto")

#: ``fold_in`` data of :func:`learner_key` ("maml" in ASCII).
LEARNER_KEY_SALT = 0x6D616D6C


class MetaLearner(NamedTuple):
    """A meta-learner as pure functions; see the module docstring."""

    init: Callable[[PRNGKey], Params]
    adapt: Callable[..., Any]
    predict: Callable[[Any, Array], Array]
    outer_loss: Callable[..., tuple[Array, Metrics]]
    meta_grad: Callable[..., tuple[Params, Metrics]]
    predict_loss: Callable[[Array, Array], Array] | None = None


def check_task_map(task_map: str) -> str:
    if task_map not in TASK_MAPS:
        raise ValueError(f"task_map must be one of {TASK_MAPS}, got {task_map!r}")
    return task_map


def resolve_task_map(task_map: str) -> str:
    """``"auto"``: ``"map"`` on CPU, else ``"vmap"``; others unchanged.

    On CPU a loop over tasks that takes each task's gradient in turn keeps one
    task's activations in cache and beats vectorizing the meta-batch
    (``benchmarks/results/throughput.md``), also on each device of a CPU split into
    several (``mamlx train --cpu-devices``: each device loops over its own tasks inside
    ``shard_map``, ``benchmarks/results/throughput_cpu_devices.md``); accelerators want
    ``vmap``. Resolved when the learner's functions are traced.
    """
    if check_task_map(task_map) != "auto":
        return task_map
    return "map" if jax.default_backend() == "cpu" else "vmap"


def learner_key(key: PRNGKey) -> PRNGKey:
    """The learner's key, derived from a step's or a task's sampling key.

    ``jax.random.fold_in(key, LEARNER_KEY_SALT)``: a fold-in far from the small
    counters that ``jax.random.split(key, n)`` and ``fold_in(key, i)`` use, so the
    learner's randomness is independent of the tasks sampled from ``key`` and the
    sampled tasks do not change when a learner gets a key (:func:`mamlx.fit`,
    :func:`mamlx.evaluate`).

    Args:
      key: a raw (``PRNGKey``) or typed (``jax.random.key``) key.

    Returns:
      A key of the same kind.

    Example:
      >>> k = jax.random.PRNGKey(0)
      >>> data = lambda k: jax.random.key_data(k).tolist()
      >>> data(learner_key(k)) not in [data(s) for s in jax.random.split(k)]
      True
    """
    return jax.random.fold_in(key, LEARNER_KEY_SALT)


def takes_key(fn: Callable) -> bool:
    """Whether ``fn`` accepts a ``key=`` keyword (or ``**kwargs``).

    Learners written before ``key`` was part of the contract do not;
    :func:`mamlx.fit` and :func:`mamlx.evaluate` call them without one.

    Example:
      >>> takes_key(lambda params, episodes, key=None: 0), takes_key(lambda p, e: 0)
      (True, False)
    """
    return takes_arg(fn, "key")


def takes_arg(fn: Callable, name: str) -> bool:
    """Whether ``fn`` accepts the keyword argument ``name`` (or ``**kwargs``).

    :func:`mamlx.fit` passes ``key=`` and ``step=`` (the training step, for learners whose
    objective follows a schedule, such as MAML++) only to ``meta_grad`` functions that take them.

    Example:
      >>> takes_arg(lambda p, e, key=None, step=None: 0, "step"), takes_arg(lambda p, e: 0, "step")
      (True, False)
    """
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # callables without a signature
        return False
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD or (p.name == name and p.kind in named)
        for p in params
    )


def call_with_key(fn: Callable, *args, key: PRNGKey | None = None, **kwargs):
    """``fn(*args, **kwargs)``, with ``key=key`` added when a key is given.

    Functions of the contract called without a key keep working, and functions
    written without a ``key`` parameter keep working when none is given.
    """
    if key is None:
        return fn(*args, **kwargs)
    return fn(*args, key=key, **kwargs)


def _per_task(fn: Callable, episodes: Episode, key: PRNGKey | None):
    """``(task_fn, xs)``: ``task_fn(meta_params, x)`` runs ``fn`` on one element of ``xs``,
    the episodes, or the episodes each with its key ``jax.random.split(key, n)[i]``."""
    if key is None:
        return fn, episodes
    n = jax.tree.leaves(episodes)[0].shape[0]
    keys = jax.random.split(key, n)
    return (lambda p, x: fn(p, x[0], key=x[1])), (episodes, keys)


def map_tasks(
    fn: Callable,
    meta_params: Params,
    episodes: Episode,
    task_map: str = "vmap",
    key: PRNGKey | None = None,
):
    """Apply ``fn(meta_params, episode)`` to every task of a batch.

    ``"vmap"`` vectorizes over tasks (best on accelerators); ``"map"`` runs tasks
    one after another inside the compiled program with ``lax.map`` (often faster
    on CPU, where per-task convolution kernels vectorize poorly); ``"auto"`` picks
    one (:func:`resolve_task_map`).

    Args:
      fn: ``fn(meta_params, episode[, key=]) -> outputs`` for one task.
      meta_params: shared by all tasks.
      episodes: a batch of tasks (leading task axis).
      task_map: ``"vmap"``, ``"map"`` or ``"auto"``.
      key: optional; task ``i`` is then called as ``fn(meta_params, episode_i,
        key=jax.random.split(key, num_tasks)[i])``.

    Returns:
      ``fn``'s outputs stacked over tasks.
    """
    task_fn, xs = _per_task(fn, episodes, key)
    if resolve_task_map(task_map) == "vmap":
        return jax.vmap(task_fn, in_axes=(None, 0))(meta_params, xs)
    return jax.lax.map(lambda x: task_fn(meta_params, x), xs)


def mean_metrics(metrics: Metrics) -> Metrics:
    """Average per-task metrics over the task axis."""
    return jax.tree.map(jnp.mean, metrics)


def map_tasks_mean(
    fn: Callable,
    meta_params: Params,
    episodes: Episode,
    task_map: str = "vmap",
    key: PRNGKey | None = None,
):
    """Mean over tasks of ``fn(meta_params, episode[, key=]) -> (tree, metrics)``.

    ``"vmap"`` vectorizes over tasks and averages. ``"map"`` runs one task at a
    time in a ``lax.scan`` that carries the running sum of ``tree``, so only one
    task's intermediates (and, where ``fn`` takes a gradient, its backward pass)
    are alive at once: they stay in the CPU's cache and the memory does not grow
    with the meta-batch. ``key``: per-task keys as in :func:`map_tasks`.

    Returns:
      ``(mean_tree, mean_metrics)``.
    """
    if resolve_task_map(task_map) == "vmap":
        trees, metrics = map_tasks(fn, meta_params, episodes, "vmap", key)
        return jax.tree.map(lambda t: jnp.mean(t, axis=0), trees), mean_metrics(metrics)
    task_fn, xs = _per_task(fn, episodes, key)
    n = jax.tree.leaves(episodes)[0].shape[0]
    first = jax.tree.map(lambda x: x[0], xs)
    shapes = jax.eval_shape(task_fn, meta_params, first)[0]

    def body(total, x):
        tree, metrics = task_fn(meta_params, x)
        return jax.tree.map(jnp.add, total, tree), metrics

    zeros = varying_like(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes), episodes)
    total, metrics = jax.lax.scan(body, zeros, xs)
    return jax.tree.map(lambda t: t / n, total), mean_metrics(metrics)


def gradient_meta_grad(outer_loss: Callable, task_map: str = "vmap") -> Callable:
    """``meta_grad`` as the gradient of the task-averaged outer loss.

    With ``task_map="map"`` each task's gradient is taken inside the loop over
    tasks and summed (see :func:`map_tasks_mean`), like a per-task PyTorch loop
    calling ``backward``: the same mean gradient, one task's activations at a time.

    Args:
      outer_loss: ``outer_loss(meta_params, episode, key=None) -> (loss, metrics)``
        (called without ``key`` when none is given).
      task_map: how tasks are mapped, see :func:`map_tasks`.

    Returns:
      ``meta_grad(meta_params, episodes, key=None) -> (grads, metrics)``, metrics
      averaged over tasks; with a key, task ``i`` gets ``jax.random.split(key,
      num_tasks)[i]``.
    """
    check_task_map(task_map)

    def task_grad(meta_params, episode, key=None):
        loss = lambda p: call_with_key(outer_loss, p, episode, key=key)
        return jax.grad(loss, has_aux=True)(meta_params)

    def batch_loss(meta_params, episodes, key):  # vmap only: "map" takes per-task gradients
        losses, metrics = map_tasks(outer_loss, meta_params, episodes, "vmap", key)
        return jnp.mean(losses), mean_metrics(metrics)

    def meta_grad(meta_params, episodes, key=None):
        if resolve_task_map(task_map) == "map":
            return map_tasks_mean(task_grad, meta_params, episodes, "map", key)
        return jax.grad(batch_loss, has_aux=True)(meta_params, episodes, key)

    return meta_grad


def gradient_learner(
    init: Callable,
    adapt: Callable,
    predict: Callable,
    outer_loss: Callable,
    task_map: str = "vmap",
    predict_loss: Callable | None = None,
) -> MetaLearner:
    """A :class:`MetaLearner` whose ``meta_grad`` is the gradient of the mean outer loss."""
    meta_grad = gradient_meta_grad(outer_loss, task_map)
    return MetaLearner(init, adapt, predict, outer_loss, meta_grad, predict_loss)


def query_outer_loss(adapt: Callable, predict: Callable, loss_fn: Callable | None = None):
    """``outer_loss(meta_params, episode, key=None)``: query loss and metrics after
    adapting on the support set (``adapt`` gets the key, when one is given)."""

    def outer_loss(meta_params, episode: Episode, key: PRNGKey | None = None):
        state = call_with_key(adapt, meta_params, episode.support_x, episode.support_y, key=key)
        return task_metrics(predict(state, episode.query_x), episode.query_y, loss_fn)

    return outer_loss
