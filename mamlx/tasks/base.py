"""The one sampler contract that :func:`mamlx.fit` and :func:`mamlx.evaluate` rely on.

A sampler draws a task (an :class:`~mamlx.episodes.Episode`, or another pytree of
arrays such as :class:`~mamlx.algorithms.siamese.Pairs`) from a PRNG key and the data
set array, in pure JAX: jittable and vmappable. Every sampler of mamlx
(:func:`~mamlx.tasks.fewshot_sampler`, :func:`~mamlx.tasks.sinusoid`,
:func:`~mamlx.algorithms.siamese.pair_sampler`) satisfies :class:`Sampler`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

import jax

from mamlx._checks import check_count
from mamlx.types import PRNGKey

__all__ = ["Sampler", "vmap_sample"]

T = TypeVar("T")


@runtime_checkable
class Sampler(Protocol):
    """What :func:`mamlx.fit`, :func:`mamlx.make_step` and :func:`mamlx.evaluate` call.

    * ``sample(key, data) -> batch``: one task drawn from ``key`` and ``data`` (the
      data set array on the device, ``None`` for analytic tasks such as sine waves).
    * ``sample_batch(key, data, num_tasks) -> batch`` with a leading axis of
      ``num_tasks`` (static under ``jax.jit``). The samplers of mamlx define it as
      :func:`vmap_sample`: ``jax.vmap(sample)`` over ``jax.random.split(key,
      num_tasks)``, so task ``i`` of a batch is ``sample(split(key, num_tasks)[i],
      data)``.

    :func:`mamlx.fit` draws its meta-batches with ``sample_batch``;
    :func:`mamlx.evaluate` draws task ``i`` with ``sample(fold_in(key, i), data)``,
    so results do not depend on its batch size (a sampler with ``sample_batch``
    only is accepted there too, with batch-size-dependent tasks).
    ``isinstance(obj, Sampler)`` checks that both methods exist.

    Example:
      >>> from mamlx.tasks import fewshot_sampler, sinusoid
      >>> isinstance(fewshot_sampler(5, 1, 15), Sampler), isinstance(sinusoid(), Sampler)
      (True, True)
    """

    def sample(self, key: PRNGKey, data: Any) -> Any:
        """One task drawn from ``key`` and ``data``."""
        ...

    def sample_batch(self, key: PRNGKey, data: Any, num_tasks: int) -> Any:
        """``num_tasks`` tasks stacked on a leading axis."""
        ...


def vmap_sample(sample: Callable[[PRNGKey, Any], T], key: PRNGKey, data: Any, num_tasks: int) -> T:
    """``num_tasks`` draws of ``sample`` stacked on a leading axis: the samplers' ``sample_batch``.

    Task ``i`` is ``sample(jax.random.split(key, num_tasks)[i], data)``; ``data`` is
    shared (not mapped over).

    Args:
      sample: ``sample(key, data) -> pytree`` of one task.
      key: PRNG key of the batch.
      data: the data set array (or ``None``), passed to every draw.
      num_tasks: number of tasks, an integer >= 1 (static under ``jax.jit``).

    Returns:
      The tasks' pytree with a leading axis of ``num_tasks``.

    Raises:
      ValueError: ``num_tasks`` is not an integer >= 1.

    Example:
      >>> draw = lambda k, d: jax.random.uniform(k, (3,)) + d
      >>> vmap_sample(draw, jax.random.key(0), 1.0, 4).shape
      (4, 3)
    """
    keys = jax.random.split(key, check_count("num_tasks", num_tasks))
    return jax.vmap(sample, in_axes=(0, None))(keys, data)
