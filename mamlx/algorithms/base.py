"""The one shape every meta-learner has.

A meta-learner is a ``NamedTuple`` of pure functions, in the style of
``optax.GradientTransformation``. One training loop, one evaluator and one CLI
serve all of them:

* ``init(key) -> meta_params``
* ``adapt(meta_params, support_x, support_y, steps=None) -> task_state``: the
  task-specific predictor (adapted weights, class prototypes, ...).
  ``steps=None`` means the learner's training setting.
* ``predict(task_state, x) -> outputs`` (logits or regression values).
* ``outer_loss(meta_params, episode) -> (loss, metrics)`` for one task.
* ``meta_grad(meta_params, episodes) -> (grads, metrics)`` for a batch of tasks
  (leading task axis). For most learners this is ``jax.grad`` of the mean outer
  loss; Reptile returns its pseudo-gradient φ − θ̃ instead, so every learner's
  outer update is an optax transformation applied to ``grads``.
* ``predict_loss(outputs, labels) -> scalar`` (optional field, default ``None``):
  the loss of ``predict``'s outputs that evaluation reports, i.e. the learner's own
  ``loss_fn`` (Relation Networks: the MSE of their scores). ``None``: cross-entropy
  for integer labels, MSE otherwise (:func:`mamlx.losses.default_loss`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mamlx import inner
from mamlx.episodes import Episode
from mamlx.losses import task_metrics
from mamlx.sharding import varying_like
from mamlx.types import Array, Metrics, Params, PRNGKey

TASK_MAPS = ("vmap", "map", "auto")


class MetaLearner(NamedTuple):
    """A meta-learner as pure functions; see the module docstring."""

    init: Callable[[PRNGKey], Params]
    adapt: Callable[..., Any]
    predict: Callable[[Any, Array], Array]
    outer_loss: Callable[[Params, Episode], tuple[Array, Metrics]]
    meta_grad: Callable[[Params, Episode], tuple[Params, Metrics]]
    predict_loss: Callable[[Array, Array], Array] | None = None


def check_task_map(task_map: str) -> str:
    if task_map not in TASK_MAPS:
        raise ValueError(f"task_map must be one of {TASK_MAPS}, got {task_map!r}")
    return task_map


def resolve_task_map(task_map: str) -> str:
    """``"auto"``: ``"map"`` on a single CPU device, else ``"vmap"``; others unchanged.

    On CPU a loop over tasks that takes each task's gradient in turn keeps one
    task's activations in cache and beats vectorizing the meta-batch
    (``benchmarks/results/throughput.md``); accelerators and sharded task
    batches want ``vmap``. Resolved when the learner's functions are traced.
    """
    if check_task_map(task_map) != "auto":
        return task_map
    return "map" if jax.default_backend() == "cpu" and jax.device_count() == 1 else "vmap"


def map_tasks(fn: Callable, meta_params: Params, episodes: Episode, task_map: str = "vmap"):
    """Apply ``fn(meta_params, episode)`` to every task of a batch.

    ``"vmap"`` vectorizes over tasks (best on accelerators); ``"map"`` runs tasks
    one after another inside the compiled program with ``lax.map`` (often faster
    on CPU, where per-task convolution kernels vectorize poorly); ``"auto"`` picks
    one (:func:`resolve_task_map`).
    """
    if resolve_task_map(task_map) == "vmap":
        return jax.vmap(fn, in_axes=(None, 0))(meta_params, episodes)
    return jax.lax.map(lambda ep: fn(meta_params, ep), episodes)


def mean_metrics(metrics: Metrics) -> Metrics:
    """Average per-task metrics over the task axis."""
    return jax.tree.map(jnp.mean, metrics)


def map_tasks_mean(fn: Callable, meta_params: Params, episodes: Episode, task_map: str = "vmap"):
    """Mean over tasks of ``fn(meta_params, episode) -> (tree, metrics)``.

    ``"vmap"`` vectorizes over tasks and averages. ``"map"`` runs one task at a
    time in a ``lax.scan`` that carries the running sum of ``tree``, so only one
    task's intermediates (and, where ``fn`` takes a gradient, its backward pass)
    are alive at once: they stay in the CPU's cache and the memory does not grow
    with the meta-batch.

    Returns:
      ``(mean_tree, mean_metrics)``.
    """
    if resolve_task_map(task_map) == "vmap":
        trees, metrics = map_tasks(fn, meta_params, episodes, "vmap")
        return jax.tree.map(lambda t: jnp.mean(t, axis=0), trees), mean_metrics(metrics)
    n = jax.tree.leaves(episodes)[0].shape[0]
    first = jax.tree.map(lambda x: x[0], episodes)
    shapes = jax.eval_shape(fn, meta_params, first)[0]

    def body(total, episode):
        tree, metrics = fn(meta_params, episode)
        return jax.tree.map(jnp.add, total, tree), metrics

    zeros = varying_like(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes), episodes)
    total, metrics = jax.lax.scan(body, zeros, episodes)
    return jax.tree.map(lambda t: t / n, total), mean_metrics(metrics)


def gradient_meta_grad(outer_loss: Callable, task_map: str = "vmap") -> Callable:
    """``meta_grad`` as the gradient of the task-averaged outer loss.

    With ``task_map="map"`` each task's gradient is taken inside the loop over
    tasks and summed (see :func:`map_tasks_mean`), like a per-task PyTorch loop
    calling ``backward``: the same mean gradient, one task's activations at a time.

    Args:
      outer_loss: ``outer_loss(meta_params, episode) -> (loss, metrics)``.
      task_map: how tasks are mapped, see :func:`map_tasks`.

    Returns:
      ``meta_grad(meta_params, episodes) -> (grads, metrics)``, metrics averaged
      over tasks.
    """
    check_task_map(task_map)

    def task_grad(meta_params, episode):
        return jax.grad(outer_loss, has_aux=True)(meta_params, episode)

    def batch_loss(meta_params, episodes):  # vmap only: "map" takes per-task gradients
        losses, metrics = map_tasks(outer_loss, meta_params, episodes, "vmap")
        return jnp.mean(losses), mean_metrics(metrics)

    def meta_grad(meta_params, episodes):
        if resolve_task_map(task_map) == "map":
            return map_tasks_mean(task_grad, meta_params, episodes, "map")
        return jax.grad(batch_loss, has_aux=True)(meta_params, episodes)

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


def check_inner_args(inner_steps: int, inner_opt: Any, task_map: str) -> None:
    """Validate the arguments every optimization-based learner shares (clear errors early)."""
    inner.check_steps(inner_steps)
    inner.as_optimizer(inner_opt)
    check_task_map(task_map)


def support_loss_fn(apply_fn: Callable, loss_fn: Callable | None = None) -> Callable:
    """``support_loss(params, x, y)``: the task loss of ``apply_fn(params, x)``."""

    def support_loss(params, x, y):
        return task_metrics(apply_fn(params, x), y, loss_fn)[0]

    return support_loss


def query_outer_loss(adapt: Callable, predict: Callable, loss_fn: Callable | None = None):
    """``outer_loss(meta_params, episode)``: query loss and metrics after adapting on support."""

    def outer_loss(meta_params, episode: Episode):
        state = adapt(meta_params, episode.support_x, episode.support_y)
        return task_metrics(predict(state, episode.query_x), episode.query_y, loss_fn)

    return outer_loss
