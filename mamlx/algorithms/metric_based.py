"""Pieces shared by the metric-based learners (ProtoNet, Matching, Relation, Siamese, ...).

**Number of classes.** Labels are ``0..N-1`` but ``N`` is not a static shape
of an episode (only ``S = N·K`` is), so class-indexed arrays have ``S`` columns:
columns ``c >= N`` have no support example and get logit ``-inf`` (probability
zero, :func:`mask_absent`). Arg-max, cross-entropy and accuracy are exactly those of
``N`` columns, and the same learner trains at 60 ways and tests at 5 or 20 (Snell et
al. train Omniglot with 60-way episodes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mamlx.losses import check_label_range
from mamlx.types import Array

__all__ = [
    "class_counts",
    "class_one_hot",
    "mask_absent",
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
