"""The sine-wave regression task distribution of Finn et al. (2017), Sec. 5.1.

Each task is y = a·sin(x + b) with amplitude a ~ U[0.1, 5.0], phase
b ~ U[0, π] and inputs x ~ U[-5, 5]; K support and K query points (the query
size can be chosen separately for evaluation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from mamlx._checks import check_count
from mamlx.episodes import Episode
from mamlx.tasks.base import vmap_sample
from mamlx.types import Array, PRNGKey


def _check_range(name: str, r: tuple[float, float]) -> tuple[float, float]:
    lo, hi = (float(v) for v in r)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"{name} must be a finite (low, high) with low < high, got {r}")
    return lo, hi


@dataclass(frozen=True)
class Sinusoid:
    """Sampler of sine-wave regression tasks (a :class:`~mamlx.tasks.Sampler`); pure, jittable.

    Use :func:`sinusoid` to build one with validated arguments.

    Attributes:
      shots: K, support points per task.
      queries: query points per task.
      amplitude: range of a.
      phase: range of b.
      x_range: range of inputs.
    """

    shots: int = 10
    queries: int = 10
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)

    def sample_params(self, key: PRNGKey) -> tuple[Array, Array]:
        """Draw one task's ``(amplitude, phase)``."""
        ka, kb = jax.random.split(key)
        a = jax.random.uniform(ka, (), minval=self.amplitude[0], maxval=self.amplitude[1])
        b = jax.random.uniform(kb, (), minval=self.phase[0], maxval=self.phase[1])
        return a, b

    def episode(self, key: PRNGKey, amplitude: Array, phase: Array) -> Episode:
        """Draw support and query points of the task with the given amplitude and phase."""
        x = jax.random.uniform(
            key, (self.shots + self.queries, 1), minval=self.x_range[0], maxval=self.x_range[1]
        )
        y = amplitude * jnp.sin(x + phase)
        return Episode(x[: self.shots], y[: self.shots], x[self.shots :], y[self.shots :])

    def sample(self, key: PRNGKey, data: Any = None) -> Episode:
        """Sample one task. ``data`` is unused (the distribution is analytic).

        Example:
          >>> ep = sinusoid(shots=5).sample(jax.random.PRNGKey(0))
          >>> ep.support_x.shape, ep.query_y.shape
          ((5, 1), (5, 1))
        """
        del data
        kt, kx = jax.random.split(key)
        return self.episode(kx, *self.sample_params(kt))

    def sample_batch(self, key: PRNGKey, data: Any, num_tasks: int) -> Episode:
        """Sample ``num_tasks`` tasks stacked on a leading axis.

        Task ``i`` is ``sample(jax.random.split(key, num_tasks)[i])``
        (:func:`~mamlx.tasks.base.vmap_sample`).

        Example:
          >>> batch = sinusoid(shots=5).sample_batch(jax.random.PRNGKey(0), None, 3)
          >>> batch.support_x.shape
          (3, 5, 1)
        """
        return vmap_sample(self.sample, key, data, num_tasks)


def sinusoid(
    shots: int = 10,
    queries: int | None = None,
    *,
    amplitude: tuple[float, float] = (0.1, 5.0),
    phase: tuple[float, float] = (0.0, math.pi),
    x_range: tuple[float, float] = (-5.0, 5.0),
) -> Sinusoid:
    """Build the sine-wave task sampler of the MAML paper.

    Args:
      shots: K support points per task (> 0).
      queries: query points per task; defaults to ``shots`` as in the paper.
      amplitude: amplitude range, default U[0.1, 5.0].
      phase: phase range, default U[0, π].
      x_range: input range, default U[-5, 5].

    Returns:
      A :class:`Sinusoid` sampler with ``sample(key, data=None)`` and
      ``sample_batch(key, data, num_tasks)``.

    Raises:
      ValueError: on non-positive counts or empty ranges.
    """
    shots = check_count("shots (K)", shots)
    queries = shots if queries is None else check_count("queries", queries)
    return Sinusoid(
        shots=shots,
        queries=queries,
        amplitude=_check_range("amplitude", amplitude),
        phase=_check_range("phase", phase),
        x_range=_check_range("x_range", x_range),
    )
