"""From a run configuration to a runnable setup, through the two tables.

``build(config)`` looks the data set and the learner up in :mod:`mamlx.registry` and
returns the learner, the samplers, the data and the outer optimizer, ready for
:func:`mamlx.fit`: the one path that Python code, ``mamlx train``, ``mamlx eval`` and the
benchmark harness all take. Configurations live in :mod:`mamlx.config`, the papers'
settings in :mod:`mamlx.presets`, the learners' own settings in :mod:`mamlx.learners`.

Example:
  >>> from mamlx.config import SinusoidConfig
  >>> exp = build(SinusoidConfig(algo="fomaml", steps=10))
  >>> params = exp.learner.init(jax.random.PRNGKey(0))
  >>> batch = exp.sampler.sample_batch(jax.random.PRNGKey(1), exp.data, 2)
  >>> grads, metrics = jax.jit(exp.learner.meta_grad)(params, batch)
  >>> sorted(metrics)
  ['loss']
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax

from mamlx import registry
from mamlx.algorithms.base import MetaLearner, resolve_task_map
from mamlx.config import FewShotConfig, RunConfig, outer_optimizer


class Experiment(NamedTuple):
    """A built configuration, ready for :func:`mamlx.train.fit`."""

    learner: MetaLearner
    sampler: Any
    data: Any
    optimizer: optax.GradientTransformation
    eval_sampler: Any = None
    splits: dict | None = None  # held-out arrays by name ("val", "test")


def build_learner(config: RunConfig) -> MetaLearner:
    """The learner of a configuration, without loading any data.

    Example:
      >>> from mamlx.config import FewShotConfig
      >>> learner = build_learner(FewShotConfig(algo="protonet", filters=8))
      >>> jax.tree.leaves(learner.init(jax.random.PRNGKey(0)))[0].dtype
      dtype('float32')
    """
    entry = registry.get_learner(config.algo)
    ctx = registry.get_dataset(config.task).context(config)
    return entry.build(config.learner, ctx)


def build(config: RunConfig) -> Experiment:
    """Build learner, samplers, data and outer optimizer for a configuration.

    Args:
      config: a run configuration (:mod:`mamlx.config`) of a registered data set and
        learner.

    Returns:
      An :class:`Experiment`; ``sampler`` is the learner's own training sampler where
      it has one (Siamese networks train on pairs), else the data set's episodes.
    """
    if not isinstance(config, RunConfig):
        raise ValueError(f"cannot build configuration of type {type(config).__name__}")
    entry = registry.get_learner(config.algo)
    data = registry.get_dataset(config.task).load(config)
    sampler = data.sampler
    if entry.train_sampler is not None:
        sampler = entry.train_sampler(config.learner, config) or sampler
    return Experiment(
        build_learner(config),
        sampler,
        data.train,
        outer_optimizer(config),
        eval_sampler=data.eval_sampler,
        splits=data.splits,
    )


def resolved_settings(config: RunConfig) -> dict:
    """What a configuration leaves to the machine, as resolved on this one.

    ``config.json`` keeps what a run computes (``task_map="auto"``, ``conv_impl=""``);
    this gives what those defaults became here: the backend and devices, the task
    map and, for image runs, the convolution. The CLI saves it in ``run.json``.
    """
    from mamlx.datasets import fewshot_conv_impl

    device = jax.devices()[0]
    out = {
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "task_map": resolve_task_map(config.task_map),
    }
    if isinstance(config, FewShotConfig):
        out["conv_impl"] = fewshot_conv_impl(config)
    return out
