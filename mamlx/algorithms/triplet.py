"""Triplet-loss embedding (Schroff, Kalenichenko & Philbin, FaceNet, CVPR 2015) as a learner.

An episode of ``N`` ways with ``K = shots + queries`` examples per class is FaceNet's
P×K batch: the triplet loss (:func:`mamlx.algorithms.margin.triplet_loss`, semi-hard or
batch-hard mining) runs over all its images, embedded in one call and L2-normalised,
with squared Euclidean distances (FaceNet, margin α = 0.2). Episode labels are local
(``0..N-1``), which is all triplet mining needs.

Few-shot use (:func:`mamlx.evaluate`) follows the ProtoNet rule on the unit sphere
(:func:`unit_prototype_rule`): class means of the normalised support embeddings,
logits ``−‖ê(x) − p_c‖²``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from mamlx.algorithms.base import MetaLearner, check_task_map, gradient_learner
from mamlx.algorithms.margin import check_triplet_settings, l2_normalize, triplet_loss
from mamlx.algorithms.metric_based import (
    class_counts,
    mask_absent,
    prototypes,
    squared_distances,
)
from mamlx.algorithms.protonet import ProtoState
from mamlx.episodes import Episode
from mamlx.losses import accuracy
from mamlx.models.adapter import ApplyFn
from mamlx.types import Array, Params, PRNGKey

__all__ = ["triplet", "unit_embedding", "unit_prototype_rule"]


def unit_embedding(embed_fn: ApplyFn, part: str | None = None) -> Callable[[Params, Array], Array]:
    """``embed(params, x) -> (B, D)`` L2-normalised flat embeddings of ``embed_fn``
    (applied to ``params[part]`` when ``part`` is given)."""

    def embed(params: Params, x: Array) -> Array:
        e = embed_fn(params if part is None else params[part], x)
        return l2_normalize(e.reshape(e.shape[0], -1))

    return embed


def unit_prototype_rule(embed: Callable[[Params, Array], Array]) -> tuple[Callable, Callable]:
    """``(adapt, predict)`` of the ProtoNet rule on normalised embeddings.

    ``adapt`` averages the normalised support embeddings per class
    (:class:`~mamlx.algorithms.protonet.ProtoState`); ``predict`` returns ``−‖ê(x) −
    p_c‖²``, absent classes at ``-inf``. ``embed`` as :func:`unit_embedding` gives.
    """

    def adapt(meta_params: Params, support_x: Array, support_y: Array, steps=None, key=None):
        del steps, key  # no inner optimisation, deterministic
        emb = embed(meta_params, support_x)
        return ProtoState(meta_params, prototypes(emb, support_y), class_counts(support_y))

    def predict(state: ProtoState, x: Array) -> Array:
        logits = -squared_distances(embed(state.params, x), state.prototypes)
        return mask_absent(logits, state.counts)

    return adapt, predict


def triplet(
    embed_fn: ApplyFn,
    init_fn: Callable[[PRNGKey], Params],
    *,
    margin: float = 0.2,
    mining: str = "semi_hard",
    task_map: str = "vmap",
) -> MetaLearner:
    """Triplet-loss embedding learner (FaceNet; batch-hard mining of Hermans et al. 2017).

    ``outer_loss(params, episode)`` embeds support and query images in one call,
    normalises them and returns the triplet loss over all of them, with the
    episode's ProtoNet-rule query accuracy (from the same embeddings) as a metric;
    ``meta_grad`` is its gradient averaged over the task batch.

    Args:
      embed_fn: ``embed_fn(params, x) -> (B, ...)`` embeddings.
      init_fn: ``init_fn(key) -> params``.
      margin: α (FaceNet: 0.2).
      mining: ``"semi_hard"`` (FaceNet) or ``"batch_hard"`` (Hermans et al.).
      task_map: ``"vmap"``, ``"map"`` or ``"auto"`` over the task batch.

    Returns:
      A :class:`MetaLearner` with params ``{"embed": φ}`` (as the other metric learners
      that are more than an embedding); ``adapt`` returns a
      :class:`~mamlx.algorithms.protonet.ProtoState`.

    Example:
      >>> import jax
      >>> from mamlx.models import model
      >>> from mamlx.models.embedding import ConvEmbedding
      >>> embed_fn, init_fn = model(lambda r: ConvEmbedding(1, filters=8, blocks=2, rngs=r))
      >>> learner = triplet(embed_fn, init_fn)
      >>> params = learner.init(jax.random.PRNGKey(0))
      >>> x, y = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1)), jnp.array([0, 1, 0, 1])
      >>> loss, metrics = learner.outer_loss(params, Episode(x[:2], y[:2], x[2:], y[2:]))
      >>> sorted(metrics)
      ['accuracy', 'loss']
    """
    check_task_map(task_map)
    check_triplet_settings(margin, mining)
    embed = unit_embedding(embed_fn, "embed")
    adapt, predict = unit_prototype_rule(embed)

    def init(key: PRNGKey) -> Params:
        return {"embed": init_fn(key)}

    def outer_loss(meta_params: Params, episode: Episode, key=None):
        del key  # deterministic
        s = episode.support_x.shape[0]
        emb = embed(meta_params, jnp.concatenate([episode.support_x, episode.query_x]))
        labels = jnp.concatenate([episode.support_y, episode.query_y])
        loss = triplet_loss(emb, labels, margin=margin, mining=mining)
        protos = prototypes(emb[:s], episode.support_y)
        logits = mask_absent(-squared_distances(emb[s:], protos), class_counts(episode.support_y))
        return loss, {"loss": loss, "accuracy": accuracy(logits, episode.query_y)}

    return gradient_learner(init, adapt, predict, outer_loss, task_map)
