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
      >>> mean_ci([1.0, 2.0, 3.0])
      (2.0, 1.1316...)
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("mean_ci needs at least one value")
    if v.size == 1:
        return float(v[0]), float("nan")
    return float(v.mean()), float(z * v.std(ddof=1) / math.sqrt(v.size))


def task_metrics_after(learner: MetaLearner, steps: int | None, loss_fn=None):
    """``f(meta_params, episode) -> metrics`` on the query set after ``steps`` adaptation steps."""

    def f(meta_params: Params, episode: Episode):
        task_state = learner.adapt(meta_params, episode.support_x, episode.support_y, steps=steps)
        pred = learner.predict(task_state, episode.query_x)
        return task_metrics(pred, episode.query_y, loss_fn)[1]

    return f


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
    """Query metrics (mean, 95% CI) over ``num_tasks`` tasks for each number of steps.

    Every setting in ``steps`` is evaluated on the same tasks, so differences
    between them are paired.

    Args:
      learner: the meta-learner.
      meta_params: trained meta-parameters.
      sampler: sampler of held-out tasks (``sample_batch(key, data, n)``).
      data: the held-out dataset array (``None`` for analytic tasks).
      key: PRNG key for the test tasks (keep it apart from training keys).
      num_tasks: number of test tasks (the papers use 600 or more).
      steps: test-time adaptation steps to report (``None``: the learner's default).
      batch_size: tasks evaluated per compiled call.
      loss_fn: optional loss override.

    Returns:
      ``{steps: {metric: (mean, ci95)}}``.
    """
    if num_tasks <= 0:
        raise ValueError(f"num_tasks must be positive, got {num_tasks}")
    fns = {s: jax.jit(jax.vmap(task_metrics_after(learner, s, loss_fn), (None, 0))) for s in steps}
    per_task: dict = {s: {} for s in steps}
    done = 0
    while done < num_tasks:
        n = min(batch_size, num_tasks - done)
        episodes = sampler.sample_batch(jax.random.fold_in(key, done), data, batch_size)
        for s, fn in fns.items():
            for name, v in fn(meta_params, episodes).items():
                per_task[s].setdefault(name, []).append(np.asarray(v)[:n])
        done += n
    return {s: {k: mean_ci(np.concatenate(v)) for k, v in m.items()} for s, m in per_task.items()}
