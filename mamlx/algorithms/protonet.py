"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017).

Each class ``c`` of an episode is represented by the mean embedding of its
support examples, and a query is classified by a softmax over negative squared
Euclidean distances:

    p_c = (1/|S_c|) Σ_{x ∈ S_c} f_φ(x),   logits_c(x) = −‖f_φ(x) − p_c‖²

Training minimises the query cross-entropy by backpropagating through ``f_φ``.

**Number of classes.** Any number of ways: class-indexed arrays have ``S``
columns, those without support examples at ``-inf``
(:mod:`mamlx.algorithms.metric_based`), so the same learner trains at 60 ways
and tests at 5 or 20 (Snell et al. train Omniglot with 60-way episodes).

**Batch norm.** Embeddings with batch norm in training mode (the Conv-4) use
the statistics of each call: ``adapt`` embeds the support set in one batch,
``predict`` the queries in another, as the MAML Conv-4 does. Predicting on a
single image with such a model is therefore degenerate; pass query batches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from mamlx.algorithms.base import (
    MetaLearner,
    check_task_map,
    gradient_learner,
    query_outer_loss,
)
from mamlx.algorithms.metric_based import (
    class_counts,
    mask_absent,
    prototypes,
    squared_distances,
)
from mamlx.models.adapter import ApplyFn
from mamlx.types import Array, Params, PRNGKey

__all__ = ["ProtoState", "protonet"]


class ProtoState(NamedTuple):
    """Task state of a Prototypical Network.

    Attributes:
      params: embedding parameters φ.
      prototypes: ``(C, D)`` class means (``C = S``; see the module docstring).
      counts: ``(C,)`` support examples per class (0 marks an absent class).
    """

    params: Params
    prototypes: Array
    counts: Array


def protonet(
    embed_fn: ApplyFn,
    init_fn: Callable[[PRNGKey], Params],
    *,
    task_map: str = "vmap",
) -> MetaLearner:
    """Prototypical Networks (Snell et al., NeurIPS 2017).

    ``adapt`` embeds the support set and averages per class; ``predict`` returns
    ``−‖f_φ(x) − p_c‖²`` for every class; the outer loss is the query
    cross-entropy. Any number of ways works (inferred from the episode).

    Args:
      embed_fn: ``embed_fn(params, x) -> (B, ...)`` embeddings, e.g. a
        :class:`~mamlx.models.embedding.ConvEmbedding` through
        :func:`mamlx.models.model`.
      init_fn: ``init_fn(key) -> params``.
      task_map: ``"vmap"``, ``"map"`` or ``"auto"`` over the task batch (:func:`~mamlx.algorithms.map_tasks`).

    Returns:
      A :class:`MetaLearner`; ``adapt`` returns a :class:`ProtoState`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from mamlx.models import model
      >>> from mamlx.models.embedding import ConvEmbedding
      >>> embed_fn, init_fn = model(lambda r: ConvEmbedding(1, filters=8, blocks=2, rngs=r))
      >>> learner = protonet(embed_fn, init_fn)
      >>> params = learner.init(jax.random.PRNGKey(0))
      >>> state = jax.jit(learner.adapt)(params, jnp.ones((4, 8, 8, 1)), jnp.array([0, 1, 0, 1]))
      >>> jax.jit(learner.predict)(state, jnp.ones((3, 8, 8, 1))).shape
      (3, 4)
    """
    check_task_map(task_map)

    def adapt(
        meta_params: Params, support_x: Array, support_y: Array, steps=None, key=None
    ) -> ProtoState:
        del steps, key  # no inner optimisation, deterministic
        emb = embed_fn(meta_params, support_x)
        return ProtoState(meta_params, prototypes(emb, support_y), class_counts(support_y))

    def predict(state: ProtoState, x: Array) -> Array:
        emb = embed_fn(state.params, x)
        return mask_absent(-squared_distances(emb, state.prototypes), state.counts)

    outer_loss = query_outer_loss(adapt, predict)

    return gradient_learner(init_fn, adapt, predict, outer_loss, task_map)
