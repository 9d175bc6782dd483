"""The `Episode` pytree: one few-shot task (or a batch of them).

An episode holds a support set ("train" in the course's words) and a query set
("test"). A batch of tasks is the same type with a leading task axis, so
`jax.vmap` over an `Episode` maps over tasks.
"""

from __future__ import annotations

from typing import NamedTuple

import jax

from mamlx.types import Array


class Episode(NamedTuple):
    """One task: support (adaptation) data and query (evaluation) data.

    Attributes:
      support_x: support inputs, shape ``(S, *input_shape)``.
      support_y: support targets, shape ``(S, *target_shape)``; class labels are
        integers ``0..N-1`` freshly permuted per task.
      query_x: query inputs, shape ``(Q, *input_shape)``.
      query_y: query targets, shape ``(Q, *target_shape)``.

    A batch of ``T`` tasks carries one more leading axis on every field.

    Example:
      >>> import jax.numpy as jnp
      >>> ep = Episode(jnp.zeros((5, 1)), jnp.zeros((5, 1)), jnp.zeros((10, 1)), jnp.zeros((10, 1)))
      >>> num_support(ep), num_query(ep)
      (5, 10)
    """

    support_x: Array
    support_y: Array
    query_x: Array
    query_y: Array


def num_support(episode: Episode, batched: bool = False) -> int:
    """Number of support examples per task."""
    return episode.support_x.shape[1 if batched else 0]


def num_query(episode: Episode, batched: bool = False) -> int:
    """Number of query examples per task."""
    return episode.query_x.shape[1 if batched else 0]


def num_tasks(episodes: Episode) -> int:
    """Size of the leading task axis of a batch of episodes."""
    return episodes.support_x.shape[0]


def check_episode(episode: Episode, batched: bool = False) -> None:
    """Validate shapes of an episode (or a batch of them) and raise a clear error.

    Args:
      episode: the episode to check.
      batched: whether a leading task axis is expected.

    Raises:
      ValueError: naming the field and the shapes that disagree.
    """
    if not isinstance(episode, Episode):
        raise ValueError(f"expected an Episode, got {type(episode).__name__}")
    lead = 2 if batched else 1
    for name in Episode._fields:
        arr = getattr(episode, name)
        if not hasattr(arr, "shape") or arr.ndim < lead:
            raise ValueError(
                f"Episode.{name} must have at least {lead} axes "
                f"({'tasks, ' if batched else ''}examples, ...), got shape {getattr(arr, 'shape', None)}"
            )
    sx, sy, qx, qy = episode
    if batched:
        tasks = {a.shape[0] for a in episode}
        if len(tasks) != 1:
            raise ValueError(
                f"Episode fields disagree on the task axis: {[a.shape for a in episode]}"
            )
    i = lead - 1
    if sx.shape[i] != sy.shape[i]:
        raise ValueError(f"support_x has {sx.shape[i]} examples but support_y has {sy.shape[i]}")
    if qx.shape[i] != qy.shape[i]:
        raise ValueError(f"query_x has {qx.shape[i]} examples but query_y has {qy.shape[i]}")
    if sx.shape[i + 1 :] != qx.shape[i + 1 :]:
        raise ValueError(
            f"support_x and query_x have different input shapes: {sx.shape[i + 1 :]} vs {qx.shape[i + 1 :]}"
        )
    if sy.shape[i + 1 :] != qy.shape[i + 1 :]:
        raise ValueError(
            f"support_y and query_y have different target shapes: {sy.shape[i + 1 :]} vs {qy.shape[i + 1 :]}"
        )


def task(episodes: Episode, i: int) -> Episode:
    """The ``i``-th task of a batch of episodes."""
    return jax.tree.map(lambda a: a[i], episodes)
