"""Relation Networks (Sung, Yang, Zhang, Xiang, Torr & Hospedales, CVPR 2018).

Feature maps of the embedding ``f_φ`` (not flattened) are pooled per class
(sum over the class's support examples, as in the paper's K-shot setting),
concatenated with each query's feature map (the class's first, the query's second,
as the paper's C(f(x_i), f(x_j)) and its code) and scored by a learned relation
module ``g_ϕ``:

    r_{q,c} = sigmoid(g_ϕ([Σ_{y_i=c} f_φ(x_i), f_φ(x_q)])) ∈ [0, 1]

Training regresses the scores onto one-hot targets with the mean squared error
(Sung et al. 2018, Eq. 2). ``predict`` returns the scores (arg-max is the
predicted class; a cross-entropy computed from them is not the training loss).
Classes are indexed as in :mod:`mamlx.algorithms.metric_based` (``S`` columns;
absent classes score 0 and are left out of the loss).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mamlx.algorithms.base import MetaLearner, check_task_map, gradient_learner
from mamlx.algorithms.metric_based import class_one_hot, mask_absent
from mamlx.episodes import Episode
from mamlx.losses import accuracy
from mamlx.models.adapter import ApplyFn, model
from mamlx.models.heads import RelationModule
from mamlx.types import Array, Params, PRNGKey

__all__ = ["RelationState", "relation", "relation_mse"]

AGGREGATES = ("sum", "mean")


class RelationState(NamedTuple):
    """Task state of a Relation Network.

    Attributes:
      params: ``{"embed": ..., "relation": ...}``.
      class_features: ``(C, h, w, channels)`` pooled support feature maps.
      counts: ``(C,)`` support examples per class.
    """

    params: Params
    class_features: Array
    counts: Array


def relation_mse(scores: Array, labels: Array, counts: Array) -> Array:
    """Mean squared error of relation scores to one-hot targets over present classes.

    ``Σ_{q, c present} (r_{q,c} − 1[y_q = c])² / (Q · N)`` (Sung et al. 2018, Eq. 2,
    averaged).

    Example:
      >>> relation_mse(jnp.array([[1.0, 0.5, 0.0]]), jnp.array([0]), jnp.array([1.0, 1.0, 0.0]))
      Array(0.125, dtype=float32)
    """
    present = (counts > 0).astype(scores.dtype)
    target = jax.nn.one_hot(labels, scores.shape[-1], dtype=scores.dtype)
    err = jnp.square(scores - target) * present
    return jnp.sum(err) / (scores.shape[0] * jnp.sum(present))


def relation_score_mse(scores: Array, labels: Array) -> Array:
    """:func:`relation_mse` of ``predict``'s scores, whose absent classes are ``-inf``.

    Example:
      >>> relation_score_mse(jnp.array([[1.0, 0.5, -jnp.inf]]), jnp.array([0]))
      Array(0.125, dtype=float32)
    """
    present = ~jnp.all(jnp.isneginf(scores), axis=0)  # a NaN column stays and makes NaN
    return relation_mse(jnp.where(present, scores, 0.0), labels, present)


def relation(
    embed_fn: ApplyFn,
    init_fn: Callable[[PRNGKey], Params],
    *,
    feature_shape: Sequence[int],
    filters: int = 64,
    hidden: int = 8,
    aggregate: str = "sum",
    task_map: str = "vmap",
) -> MetaLearner:
    """Relation Networks (Sung et al., CVPR 2018).

    Args:
      embed_fn: ``embed_fn(params, x) -> (B, h, w, C)`` feature maps, e.g.
        ``ConvEmbedding(pool_blocks=2, flatten=False)`` (7x7x64 on 28x28 Omniglot).
      init_fn: ``init_fn(key) -> params`` of the embedding.
      feature_shape: ``(h, w, C)`` of one embedded image.
      filters: conv channels of the relation module (64 in the paper).
      hidden: hidden FC width of the relation module (8 in the paper).
      aggregate: ``"sum"`` (paper) or ``"mean"`` of the support feature maps per class.
      task_map: ``"vmap"``, ``"map"`` or ``"auto"`` over the task batch (:func:`~mamlx.algorithms.map_tasks`).

    Returns:
      A :class:`MetaLearner` with params ``{"embed", "relation"}``; ``adapt``
      returns a :class:`RelationState`, ``predict`` scores in [0, 1] (``-inf`` for
      classes without support examples); evaluation reports their
      :func:`relation_score_mse`, the training loss.

    Example:
      >>> from mamlx.models import model
      >>> from mamlx.models.embedding import ConvEmbedding
      >>> embed_fn, init_fn = model(
      ...     lambda r: ConvEmbedding(1, filters=8, blocks=2, pool_blocks=1, flatten=False, rngs=r))
      >>> learner = relation(embed_fn, init_fn, feature_shape=(4, 4, 8), filters=8)
      >>> params = learner.init(jax.random.PRNGKey(0))
      >>> state = jax.jit(learner.adapt)(params, jnp.ones((4, 8, 8, 1)), jnp.array([0, 1, 0, 1]))
      >>> jax.jit(learner.predict)(state, jnp.ones((3, 8, 8, 1))).shape
      (3, 4)
    """
    check_task_map(task_map)
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    h, w, c = (int(s) for s in feature_shape)
    rel_fn, rel_init = model(
        lambda rngs: RelationModule((h, w, 2 * c), filters=filters, hidden=hidden, rngs=rngs)
    )

    def init(key: PRNGKey) -> Params:
        k_embed, k_rel = jax.random.split(key)
        return {"embed": init_fn(k_embed), "relation": rel_init(k_rel)}

    def adapt(meta_params: Params, support_x: Array, support_y: Array, steps=None, key=None):
        del steps, key  # no inner optimisation, deterministic
        feats = embed_fn(meta_params["embed"], support_x)
        onehot = class_one_hot(support_y).astype(feats.dtype)
        counts = onehot.sum(0)
        pooled = jnp.einsum("sc,s...->c...", onehot, feats)
        if aggregate == "mean":
            pooled = pooled / jnp.maximum(counts, 1).reshape((-1,) + (1,) * (feats.ndim - 1))
        return RelationState(meta_params, pooled, counts)

    def logits(state: RelationState, x: Array) -> Array:
        q = embed_fn(state.params["embed"], x)
        # Batch norm sees the query-class pairs of present classes only, as in the paper
        # (N x Q pairs): the S - N empty columns would otherwise shift its statistics.
        present = jnp.broadcast_to(state.counts > 0, (q.shape[0], len(state.counts)))
        return rel_fn(
            state.params["relation"],
            state.class_features,
            q,
            mask=present.reshape(-1),
            method="all_pairs",
        )

    def scores(state: RelationState, x: Array) -> Array:
        return mask_absent(jax.nn.sigmoid(logits(state, x)), state.counts, fill=0.0)

    def predict(state: RelationState, x: Array) -> Array:
        return mask_absent(scores(state, x), state.counts)

    def outer_loss(meta_params: Params, episode: Episode, key=None):
        del key  # deterministic
        state = adapt(meta_params, episode.support_x, episode.support_y)
        r = scores(state, episode.query_x)
        loss = relation_mse(r, episode.query_y, state.counts)
        return loss, {"loss": loss, "accuracy": accuracy(r, episode.query_y)}

    return gradient_learner(init, adapt, predict, outer_loss, task_map, relation_score_mse)
