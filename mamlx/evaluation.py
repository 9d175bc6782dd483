"""Evaluation as the papers report it: mean ± 95% confidence interval over many tasks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from mamlx.algorithms.base import MetaLearner
from mamlx.episodes import Episode
from mamlx.losses import task_metrics
from mamlx.types import Params, PRNGKey


def mean_ci(values: Any, z: float = 1.96) -> tuple[float, float]:
    """Mean and half-width of the normal-approximation 95% confidence interval.

    ``ci = z · s / √n`` with the sample standard deviation ``s`` (ddof=1), as in
    the few-shot literature's "accuracy ± 95% CI over 600 tasks".

    Example:
      >>> mean_ci([1.0, 2.0, 3.0])  # doctest: +ELLIPSIS
      (2.0, 1.1316...)
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("mean_ci needs at least one value")
    if v.size == 1:
        return float(v[0]), float("nan")
    return float(v.mean()), float(z * v.std(ddof=1) / math.sqrt(v.size))


def task_metrics_after(learner: MetaLearner, steps: int | None, loss_fn=None):
    """``f(meta_params, episode) -> metrics`` on the query set after ``steps`` adaptation steps.

    The loss is ``loss_fn``, else the learner's ``predict_loss`` (its own loss), else
    cross-entropy for integer labels and MSE otherwise.
    """
    loss_fn = loss_fn or learner.predict_loss

    def f(meta_params: Params, episode: Episode):
        task_state = learner.adapt(meta_params, episode.support_x, episode.support_y, steps=steps)
        pred = learner.predict(task_state, episode.query_x)
        return task_metrics(pred, episode.query_y, loss_fn)[1]

    return f


def make_evaluator(
    learner: MetaLearner,
    sampler: Any,
    *,
    steps: Sequence[int | None] = (None,),
    batch_size: int = 100,
    loss_fn=None,
):
    """A reusable, compiled evaluator (compiles once; call it at every validation).

    Args:
      learner: the meta-learner.
      sampler: sampler of held-out tasks (``sample_batch(key, data, n)``).
      steps: test-time adaptation steps to report (``None``: the learner's default).
      batch_size: tasks sampled and evaluated per compiled call.
      loss_fn: optional loss override (default: the learner's ``predict_loss``).

    Returns:
      ``run(meta_params, data, *, key, num_tasks) -> {steps: {metric: (mean, ci95)}}``.
      Every setting in ``steps`` is evaluated on the same tasks (paired comparison).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")

    def one_batch(s):
        metric = jax.vmap(task_metrics_after(learner, s, loss_fn), (None, 0))
        return jax.jit(lambda p, d, k: metric(p, sampler.sample_batch(k, d, batch_size)))

    fns = {s: one_batch(s) for s in steps}

    def run(meta_params: Params, data: Any, *, key: PRNGKey, num_tasks: int):
        if num_tasks <= 0:
            raise ValueError(f"num_tasks must be positive, got {num_tasks}")
        per_task: dict = {s: {} for s in steps}
        done = 0
        while done < num_tasks:
            n = min(batch_size, num_tasks - done)
            k = jax.random.fold_in(key, done)
            for s, fn in fns.items():
                for name, v in fn(meta_params, data, k).items():
                    per_task[s].setdefault(name, []).append(np.asarray(v)[:n])
            done += n
        return {
            s: {k: mean_ci(np.concatenate(v)) for k, v in m.items()} for s, m in per_task.items()
        }

    return run


def evaluate(
    learner: MetaLearner,
    meta_params: Params,
    sampler: Any,
    data: Any = None,
    *,
    key: PRNGKey,
    num_tasks: int = 600,
    steps: Sequence[int | None] = (None,),
    batch_size: int = 100,
    loss_fn=None,
) -> dict[int | None, dict[str, tuple[float, float]]]:
    """Query metrics (mean, 95% CI) over ``num_tasks`` held-out tasks per number of steps.

    Args:
      learner: the meta-learner.
      meta_params: trained meta-parameters.
      sampler: sampler of held-out tasks (``sample_batch(key, data, n)``).
      data: the held-out dataset array (``None`` for analytic tasks).
      key: PRNG key for the test tasks (keep it apart from training keys).
      num_tasks: number of test tasks (the papers use 600 or more).
      steps: test-time adaptation steps to report (``None``: the learner's default).
      batch_size: tasks evaluated per compiled call.
      loss_fn: optional loss override (default: the learner's ``predict_loss``).

    Returns:
      ``{steps: {metric: (mean, ci95)}}``; see :func:`make_evaluator`.
    """
    run = make_evaluator(learner, sampler, steps=steps, batch_size=batch_size, loss_fn=loss_fn)
    return run(meta_params, data, key=key, num_tasks=num_tasks)
