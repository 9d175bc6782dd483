"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017), and helpers shared
by the metric-based learners.

Each class ``c`` of an episode is represented by the mean embedding of its
support examples, and a query is classified by a softmax over negative squared
Euclidean distances:

    p_c = (1/|S_c|) Σ_{x ∈ S_c} f_φ(x),   logits_c(x) = −‖f_φ(x) − p_c‖²

Training minimises the query cross-entropy by backpropagating through ``f_φ``.

**Number of classes.** Labels are ``0..N-1`` but ``N`` is not a static shape
of an episode (only ``S = N·K`` is), so class-indexed arrays have ``S`` columns:
columns ``c >= N`` have no support example and get logit ``-inf`` (probability
zero). Arg-max, cross-entropy and accuracy are exactly those of ``N`` columns,
and the same learner trains at 60 ways and tests at 5 or 20 (Snell et al.
train Omniglot with 60-way episodes).

**Batch norm.** Embeddings with batch norm in training mode (the Conv-4) use
the statistics of each call: ``adapt`` embeds the support set in one batch,
``predict`` the queries in another, as the MAML Conv-4 does. Predicting on a
single image with such a model is therefore degenerate; pass query batches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mamlx.algorithms.base import (
    MetaLearner,
    check_task_map,
    gradient_learner,
    query_outer_loss,
)
from mamlx.losses import check_label_range
from mamlx.models.adapter import ApplyFn
from mamlx.types import Array, Params, PRNGKey

__all__ = [
    "ProtoState",
    "class_counts",
    "class_one_hot",
    "mask_absent",
    "protonet",
    "prototypes",
    "squared_distances",
]


def class_one_hot(labels: Array, num_classes: int | None = None) -> Array:
    """One-hot ``(S, C)`` float matrix of integer labels; ``C`` defaults to ``S``.

    Labels must lie in ``[0, C)``: concrete ones out of range raise a ``ValueError``;
    traced ones out of range (under ``jit``) give a row of NaN, so prototypes, scores and
    the loss become NaN (and :func:`mamlx.fit` stops) instead of a class silently missing.

    Example:
      >>> class_one_hot(jnp.array([1, 0, 1])).tolist()
      [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    """
    num_classes = labels.shape[0] if num_classes is None else num_classes
    check_label_range(labels, num_classes, "support labels")
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    bad = (labels < 0) | (labels >= num_classes)
    return jnp.where(bad[:, None], jnp.nan, onehot)


def class_counts(labels: Array, num_classes: int | None = None) -> Array:
    """Support examples per class, ``(C,)`` with ``C`` as in :func:`class_one_hot`.

    Example:
      >>> class_counts(jnp.array([1, 0, 1])).tolist()
      [1.0, 2.0, 0.0]
    """
    return class_one_hot(labels, num_classes).sum(0)


def prototypes(embeddings: Array, labels: Array, num_classes: int | None = None) -> Array:
    """Per-class mean embeddings ``p_c = (1/|S_c|) Σ_{y_i = c} e_i`` (Snell et al. 2017, Eq. 1).

    Args:
      embeddings: support embeddings ``(S, *feature_shape)``.
      labels: integer labels ``(S,)``.
      num_classes: number of prototype rows (default ``S``); rows of classes
        without support examples are zero.

    Returns:
      ``(C, *feature_shape)`` prototypes.

    Example:
      >>> prototypes(jnp.array([[0.0], [2.0], [5.0]]), jnp.array([0, 0, 1]), 2).tolist()
      [[1.0], [5.0]]
    """
    onehot = class_one_hot(labels, num_classes).astype(embeddings.dtype)
    flat = embeddings.reshape(embeddings.shape[0], -1)
    sums = onehot.T @ flat
    means = sums / jnp.maximum(onehot.sum(0), 1)[:, None]
    return means.reshape((onehot.shape[1], *embeddings.shape[1:]))


def squared_distances(a: Array, b: Array) -> Array:
    """Pairwise squared Euclidean distances ``‖a_i − b_j‖²``, shape ``(len(a), len(b))``.

    Computed from differences (not ``‖a‖² + ‖b‖² − 2a·b``), so it is exact
    for equal points and never negative.

    Example:
      >>> squared_distances(jnp.array([[0.0, 0.0]]), jnp.array([[3.0, 4.0], [0.0, 0.0]])).tolist()
      [[25.0, 0.0]]
    """
    a = a.reshape(a.shape[0], -1)
    b = b.reshape(b.shape[0], -1)
    return jnp.sum(jnp.square(a[:, None, :] - b[None, :, :]), axis=-1)


def mask_absent(logits: Array, counts: Array, fill: float = -jnp.inf) -> Array:
    """Set the logits of classes without support examples to ``fill`` (default ``-inf``);
    NaN counts, from out-of-range labels, make NaN.

    Example:
      >>> mask_absent(jnp.ones((1, 3)), jnp.array([1.0, 2.0, 0.0])).tolist()
      [[1.0, 1.0, -inf]]
    """
    return jnp.where(counts > 0, logits, jnp.where(jnp.isnan(counts), jnp.nan, fill))


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
      >>> from mamlx.models import model
      >>> from mamlx.models.embedding import ConvEmbedding
      >>> embed_fn, init_fn = model(lambda r: ConvEmbedding(1, filters=8, blocks=2, rngs=r))
      >>> learner = protonet(embed_fn, init_fn)
      >>> params = learner.init(jax.random.PRNGKey(0))
      >>> state = learner.adapt(params, jnp.ones((4, 8, 8, 1)), jnp.array([0, 1, 0, 1]))
      >>> learner.predict(state, jnp.ones((3, 8, 8, 1))).shape
      (3, 4)
    """
    check_task_map(task_map)

    def adapt(meta_params: Params, support_x: Array, support_y: Array, steps=None) -> ProtoState:
        del steps  # no inner optimisation
        emb = embed_fn(meta_params, support_x)
        return ProtoState(meta_params, prototypes(emb, support_y), class_counts(support_y))

    def predict(state: ProtoState, x: Array) -> Array:
        emb = embed_fn(state.params, x)
        return mask_absent(-squared_distances(emb, state.prototypes), state.counts)

    outer_loss = query_outer_loss(adapt, predict)

    return gradient_learner(init_fn, adapt, predict, outer_loss, task_map)
