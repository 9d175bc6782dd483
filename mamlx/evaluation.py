"""Evaluation as the papers report it: mean ± 95% confidence interval over many tasks."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mamlx._checks import check_count
from mamlx.algorithms.base import (
    MetaLearner,
    call_with_key,
    check_task_map,
    learner_key,
    resolve_task_map,
    takes_key,
)
from mamlx.episodes import Episode
from mamlx.losses import task_metrics
from mamlx.runtime import release_host_memory
from mamlx.tasks.base import Sampler
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
    """``f(meta_params, episode, key=None) -> metrics`` on the query set after ``steps``
    adaptation steps.

    The loss is ``loss_fn``, else the learner's ``predict_loss`` (its own loss), else
    cross-entropy for integer labels and MSE otherwise. ``key`` goes to
    ``learner.adapt`` (not to an ``adapt`` without a ``key`` parameter).
    """
    loss_fn = loss_fn or learner.predict_loss
    keyed = takes_key(learner.adapt)

    def f(meta_params: Params, episode: Episode, key: PRNGKey | None = None):
        sx, sy = episode.support_x, episode.support_y
        key = key if keyed else None
        task_state = call_with_key(learner.adapt, meta_params, sx, sy, steps=steps, key=key)
        pred = learner.predict(task_state, episode.query_x)
        return task_metrics(pred, episode.query_y, loss_fn)[1]

    return f


#: Tasks per compiled evaluation call where memory allows (accelerators: halved on XLA's
#: out-of-memory error).
BATCH_SIZE = 100
#: On CPU, at most this many input floats (support and query images) per compiled call:
#: there the operating system kills a process that runs out of memory, so there is no
#: error to halve on. 100 Omniglot 20-way 5-shot tasks (40,000 images) took 24 GB. A first
#: guess, checked after compiling against :data:`CPU_MEMORY_FRACTION`.
CPU_INPUT_FLOATS = 2**21


def episode_floats(sampler: Sampler, data: Any, key: PRNGKey) -> int:
    """Floating-point input values (support and query) of one task of ``sampler``.

    Example:
      >>> from mamlx.tasks import sinusoid
      >>> episode_floats(sinusoid(5, 10), None, jax.random.PRNGKey(0))
      30
    """
    if hasattr(sampler, "sample"):
        shapes = jax.eval_shape(sampler.sample, key, data)
    else:
        shapes = jax.eval_shape(lambda k, d: sampler.sample_batch(k, d, 1), key, data)
    leaves = jax.tree.leaves(shapes)
    return sum(x.size for x in leaves if jnp.issubdtype(x.dtype, jnp.floating))


def default_batch_size(sampler: Sampler, data: Any, key: PRNGKey) -> int:
    """Tasks per compiled evaluation call when none is given: :data:`BATCH_SIZE`, and on
    CPU no more than :data:`CPU_INPUT_FLOATS` input values (at least one task)."""
    if jax.default_backend() != "cpu":
        return BATCH_SIZE
    return max(1, min(BATCH_SIZE, CPU_INPUT_FLOATS // max(episode_floats(sampler, data, key), 1)))


#: On CPU, a compiled evaluation call may take at most this fraction of the memory
#: available when it is compiled (XLA's own estimate of its buffers); a larger batch is
#: cut to fit. A Relation Network's 5-way 5-shot task took 847 MB, so the 26 tasks the
#: input bound allows took 22 GB and the process was killed.
CPU_MEMORY_FRACTION = 0.5


def available_memory() -> int:
    """Bytes of memory available to this process now (Linux ``MemAvailable``; else the
    machine's physical memory)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def compiled_bytes(compiled: Any) -> int | None:
    """Memory XLA assigns to a compiled call (arguments, outputs, temporaries), or
    ``None`` when the backend does not say."""
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    return stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes


def out_of_device_memory(err: Exception) -> bool:
    """Whether ``err`` is XLA's out-of-memory error (the evaluator and the CLI ask)."""
    return type(err).__name__ in ("JaxRuntimeError", "XlaRuntimeError") and (
        "RESOURCE_EXHAUSTED" in str(err) or "Out of memory" in str(err)
    )


def make_evaluator(
    learner: MetaLearner,
    sampler: Sampler,
    *,
    steps: Sequence[int | None] = (None,),
    batch_size: int | None = None,
    loss_fn=None,
    task_map: str = "auto",
):
    """A reusable, compiled evaluator (compiles once; call it at every validation).

    Task ``i`` of a run is sampled from ``fold_in(key, i)`` with ``sampler.sample``, so
    the tasks, and therefore the result, do not depend on ``batch_size``: when a batch
    does not fit in the device's memory the evaluator halves it and goes on (and keeps
    the smaller size for later calls). On CPU, where the operating system kills a
    process out of memory instead of XLA raising an error, a compiled batch that XLA
    sizes over :data:`CPU_MEMORY_FRACTION` of the memory available is cut in proportion
    before it runs. A run of fewer than ``batch_size`` tasks
    evaluates only those. Samplers without ``sample`` are called as
    ``sample_batch(fold_in(key, first_task), data, batch)``, which ties the tasks to the
    batch size. Task ``i`` is adapted with the key ``learner_key(fold_in(key, i))``
    (:func:`mamlx.algorithms.learner_key`: apart from the sampler's keys), the same for
    every setting of ``steps``.

    Args:
      learner: the meta-learner.
      sampler: sampler of held-out tasks, a :class:`~mamlx.tasks.Sampler` (one with
        only ``sample_batch(key, data, n)`` is accepted too, see above).
      steps: test-time adaptation steps to report (``None``: the learner's default).
      batch_size: at most this many tasks sampled and evaluated per compiled call
        (``None``: :func:`default_batch_size`, bounded by memory on CPU).
      loss_fn: optional loss override (default: the learner's ``predict_loss``).
      task_map: how the tasks of a compiled call are adapted: ``"vmap"`` (vectorized),
        ``"map"`` (one after another, ``lax.map``) or ``"auto"`` (``"map"`` on CPU, as
        training does, :func:`mamlx.algorithms.resolve_task_map`). The same tasks and the
        same metrics up to float32 round-off either way, which long adaptations amplify
        (after Reptile's 97 Adam steps from an untrained network, up to 1.3e-2 in one of
        16 tasks' losses; vectorized batches of 4 tasks and of 1 differ by 1e-3 there too);
        on 2 CPU cores ``"map"`` evaluated Omniglot 5-way 1-shot MAML 1.3-1.8x, 20-way 1-shot
        Reptile 1.9-3.3x and the metric learners 1.8-2.1x faster than ``"vmap"`` in three runs
        of ``benchmarks/eval_task_map.py``.

    Returns:
      ``run(meta_params, data, *, key, num_tasks, per_task=False, progress=False) ->
      {steps: {metric: (mean, ci95)}}``; with ``per_task=True``, ``{steps: {metric: array
      of one value per task}}`` instead; ``progress=True`` shows a progress bar with the
      running means (of the last setting of ``steps``) over the tasks done. Every setting in ``steps`` is evaluated on the same tasks
      (paired comparison, also across models evaluated with the same key).
    """
    if batch_size is not None:
        batch_size = check_count("batch_size", batch_size, low=1)
    per_task_keys = hasattr(sampler, "sample")
    vectorize = resolve_task_map(check_task_map(task_map)) == "vmap"
    fns: dict = {}
    largest = [batch_size]  # set at the first call if None; shrinks when out of memory

    def batch_fn(s, b, args):
        """The compiled call of ``b`` tasks; ``None`` (and ``largest`` cut to what fits)
        when on CPU it would take more than its share of the memory available."""
        if (s, b) in fns:
            return fns[s, b]
        one = task_metrics_after(learner, s, loss_fn)
        if vectorize:
            metric = jax.vmap(one, (None, 0, 0))
        else:

            def metric(p, episodes, keys):
                return jax.lax.map(lambda x: one(p, *x), (episodes, keys))

        def sample(k, d, first):
            keys = jax.vmap(lambda i: jax.random.fold_in(k, i))(first + jnp.arange(b))
            if not per_task_keys:
                episodes = sampler.sample_batch(jax.random.fold_in(k, first), d, b)
            else:
                episodes = jax.vmap(sampler.sample, (0, None))(keys, d)
            return episodes, jax.vmap(learner_key)(keys)

        fn = jax.jit(lambda p, d, k, first: metric(p, *sample(k, d, first)))
        compiled = fn.lower(*args).compile()
        need = compiled_bytes(compiled) if jax.default_backend() == "cpu" else None
        budget = CPU_MEMORY_FRACTION * available_memory() if need is not None else None
        if need is not None and need > budget:
            if b > 1:  # the buffers grow with the tasks: cut in proportion
                largest[0] = max(1, int(b * budget / need))
                fns.clear()
                return None
            warnings.warn(
                f"evaluating one task takes {need / 2**30:.1f} GiB, more than "
                f"{CPU_MEMORY_FRACTION:.0%} of the memory available; the operating system "
                "may stop the process",
                stacklevel=4,
            )
        fns[s, b] = compiled
        return compiled

    def run(
        meta_params: Params,
        data: Any,
        *,
        key: PRNGKey,
        num_tasks: int,
        per_task: bool = False,
        progress: bool = False,
    ):
        num_tasks = check_count("num_tasks", num_tasks, low=1)
        if largest[0] is None:
            largest[0] = default_batch_size(sampler, data, key)
        values: dict = {s: {} for s in steps}
        bar = None
        if progress:  # the first batch compiles: the bar says so before it starts
            from tqdm.auto import tqdm

            bar = tqdm(total=num_tasks, unit="task", desc="evaluating (compiling)", leave=False)
        try:
            _evaluate_batches(meta_params, data, key, num_tasks, values, bar)
        finally:
            if bar is not None:
                bar.close()
            release_host_memory()  # the batches' freed buffers: not kept between validations
        reduce = np.concatenate if per_task else lambda v: mean_ci(np.concatenate(v))
        return {s: {k: reduce(v) for k, v in m.items()} for s, m in values.items()}

    def _evaluate_batches(meta_params, data, key, num_tasks, values, bar) -> int:
        done = 0
        while done < num_tasks:
            b = min(largest[0], num_tasks)
            try:
                calls = {}
                for s in steps:
                    if (call := batch_fn(s, b, (meta_params, data, key, done))) is None:
                        break  # too large for this machine's memory: cut, compile again
                    calls[s] = call
                else:
                    out = {s: c(meta_params, data, key, done) for s, c in calls.items()}
                if len(calls) < len(steps):
                    continue
            except jax.errors.JaxRuntimeError as e:
                if b == 1 or not out_of_device_memory(e):
                    raise
                largest[0] = -(-b // 2)
                fns.clear()
                continue
            n = min(b, num_tasks - done)
            for s, metrics in out.items():
                for name, v in metrics.items():
                    values[s].setdefault(name, []).append(np.asarray(v)[:n])
            done += n
            if bar is not None:  # running means over the tasks done so far, this batch included
                last = values[steps[-1]]
                shown = {k: f"{np.mean(np.concatenate(v)):.4g}" for k, v in last.items()}
                bar.set_description("evaluating", refresh=False)
                bar.set_postfix(shown, refresh=False)
                bar.update(n)
        return done

    return run


def evaluate(
    learner: MetaLearner,
    meta_params: Params,
    sampler: Sampler,
    data: Any = None,
    *,
    key: PRNGKey,
    num_tasks: int = 600,
    steps: Sequence[int | None] = (None,),
    batch_size: int | None = None,
    loss_fn=None,
    per_task: bool = False,
    progress: bool = False,
    task_map: str = "auto",
) -> dict[int | None, dict[str, Any]]:
    """Query metrics (mean, 95% CI) over ``num_tasks`` held-out tasks per number of steps.

    Args:
      learner: the meta-learner.
      meta_params: trained meta-parameters.
      sampler: sampler of held-out tasks, a :class:`~mamlx.tasks.Sampler` (see
        :func:`make_evaluator` for how tasks are drawn).
      data: the held-out dataset array (``None`` for analytic tasks).
      key: PRNG key for the test tasks (keep it apart from training keys).
      num_tasks: number of test tasks (the papers use 600 or more).
      steps: test-time adaptation steps to report (``None``: the learner's default).
      batch_size: at most this many tasks per compiled call (cut when out of memory;
        ``None``: :func:`default_batch_size`).
      loss_fn: optional loss override (default: the learner's ``predict_loss``).
      per_task: return each task's value instead of the mean and interval.
      progress: show a progress bar (tasks done, running means).
      task_map: tasks adapted vectorized or one after another, see :func:`make_evaluator`.

    Returns:
      ``{steps: {metric: (mean, ci95)}}`` (``per_task``: ``{steps: {metric: array}}``);
      see :func:`make_evaluator`.
    """
    run = make_evaluator(
        learner, sampler, steps=steps, batch_size=batch_size, loss_fn=loss_fn, task_map=task_map
    )
    return run(
        meta_params, data, key=key, num_tasks=num_tasks, per_task=per_task, progress=progress
    )
