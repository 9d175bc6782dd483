"""Angular-margin softmax embeddings (SphereFace, CosFace, ArcFace) as a learner.

The face-recognition recipe: a classifier over *every* training identity (here every
training character, rotations counted where the run rotates) with normalised features
and weights and a margin on the true class (:func:`mamlx.algorithms.margin.angular_margin_logits`);
the classifier's weights are dropped after training and the normalised features are
the embedding. Training batches are plain labelled images over all training classes
(:func:`mamlx.tasks.batches.class_batch_sampler`), not episodes.

The papers' settings (:data:`PAPER_MARGINS`):

* SphereFace (Liu, Wen, Yu, Li, Raj & Song, CVPR 2017): ``m1 = 4`` (A-Softmax, m = 4,
  with ψ's monotone extension). The paper does not normalise features; with them
  normalised (ArcFace's unified form) the scale is ArcFace's ``s = 64``.
* CosFace (Wang, Wang, Zhou, Ji, Gong, Zhou, Li & Liu, CVPR 2018): ``m3 = 0.35``, ``s = 64``
  (AM-softmax, Wang, Cheng, Liu & Liu 2018: the same margin at ``s = 30``).
* ArcFace (Deng, Guo, Xue & Zafeiriou, CVPR 2019): ``m2 = 0.5``, ``s = 64``.

Few-shot use (:func:`mamlx.evaluate`) is the ProtoNet rule on the unit sphere
(:func:`mamlx.algorithms.triplet.unit_prototype_rule`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mamlx.algorithms.base import (
    MetaLearner,
    check_task_map,
    gradient_meta_grad,
    query_outer_loss,
)
from mamlx.algorithms.margin import angular_margin_logits, check_margins, l2_normalize
from mamlx.algorithms.triplet import unit_embedding, unit_prototype_rule
from mamlx.losses import accuracy
from mamlx.models.adapter import ApplyFn
from mamlx.types import Params, PRNGKey

__all__ = ["PAPER_MARGINS", "Margins", "angular_margin"]


class Margins(NamedTuple):
    """Scale and margins of :func:`~mamlx.algorithms.margin.angular_margin_logits`."""

    s: float
    m1: int = 1
    m2: float = 0.0
    m3: float = 0.0


#: Each paper's setting (see the module docstring).
PAPER_MARGINS: dict[str, Margins] = {
    "sphereface": Margins(s=64.0, m1=4),
    "cosface": Margins(s=64.0, m3=0.35),
    "arcface": Margins(s=64.0, m2=0.5),
}


def angular_margin(
    embed_fn: ApplyFn,
    init_fn: Callable[[PRNGKey], Params],
    *,
    classes: int,
    feature_dim: int,
    s: float,
    m1: int = 1,
    m2: float = 0.0,
    m3: float = 0.0,
    task_map: str = "vmap",
) -> MetaLearner:
    """Angular-margin softmax over all training classes (SphereFace / CosFace / ArcFace).

    Params are ``{"embed": φ, "weight": W}`` with ``W`` of shape ``(classes,
    feature_dim)``. ``meta_grad(params, batches)`` takes a
    :class:`~mamlx.tasks.batches.LabeledBatch` with a leading batch axis (its
    ``sample_batch``) and is the gradient of the mean margin cross-entropy; like the
    Siamese learner's ``meta_grad`` on pairs, it does not take episodes.
    ``outer_loss(params, episode)`` is the episode's query cross-entropy under the
    few-shot rule (what :func:`mamlx.evaluate` reports).

    Args:
      embed_fn: ``embed_fn(params, x) -> (B, feature_dim)``.
      init_fn: ``init_fn(key) -> params`` of the embedding.
      classes: training classes (rows of ``W``).
      feature_dim: embedding size.
      s, m1, m2, m3: scale and margins (:data:`PAPER_MARGINS`).
      task_map: ``"vmap"``, ``"map"`` or ``"auto"`` over the batch axis.

    Returns:
      A :class:`MetaLearner`.

    Example:
      >>> from mamlx.models import model
      >>> from mamlx.models.embedding import ConvEmbedding
      >>> from mamlx.tasks.batches import LabeledBatch
      >>> embed_fn, init_fn = model(lambda r: ConvEmbedding(1, filters=8, blocks=3, rngs=r))
      >>> learner = angular_margin(embed_fn, init_fn, classes=5, feature_dim=8,
      ...                          **PAPER_MARGINS["arcface"]._asdict())
      >>> params = learner.init(jax.random.PRNGKey(0))
      >>> batch = LabeledBatch(jnp.ones((1, 4, 8, 8, 1)), jnp.array([[0, 1, 2, 4]]))
      >>> grads, metrics = jax.jit(learner.meta_grad)(params, batch)
      >>> grads["weight"].shape, sorted(metrics)
      ((5, 8), ['accuracy', 'loss'])
    """
    check_task_map(task_map)
    check_margins(s, m1, m2, m3)
    if int(classes) != classes or classes < 2:
        raise ValueError(f"classes must be an integer >= 2, got {classes!r}")
    if int(feature_dim) != feature_dim or feature_dim < 1:
        raise ValueError(f"feature_dim must be an integer >= 1, got {feature_dim!r}")
    classes, feature_dim = int(classes), int(feature_dim)
    embed = unit_embedding(embed_fn, "embed")
    adapt, predict = unit_prototype_rule(embed)

    def init(key: PRNGKey) -> Params:
        k_embed, k_weight = jax.random.split(key)
        params = init_fn(k_embed)
        dtype = jax.tree.leaves(params)[0].dtype
        weight = jax.random.normal(k_weight, (classes, feature_dim), dtype) / feature_dim**0.5
        return {"embed": params, "weight": weight}

    def batch_loss(params: Params, batch, key=None):
        del key  # deterministic
        emb = embed_fn(params["embed"], batch.x)
        emb = emb.reshape(emb.shape[0], -1)
        if emb.shape[1] != params["weight"].shape[1]:  # static shapes: fine under jit
            raise ValueError(
                f"the embedding has {emb.shape[1]} features but the class weights "
                f"{params['weight'].shape[1]}; pass feature_dim={emb.shape[1]}"
            )
        logits = angular_margin_logits(emb, params["weight"], batch.y, s=s, m1=m1, m2=m2, m3=m3)
        safe = jnp.clip(batch.y, 0, classes - 1)  # bad rows are NaN already
        loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, safe))
        cos = l2_normalize(emb) @ l2_normalize(params["weight"]).T
        return loss, {"loss": loss, "accuracy": accuracy(cos, safe)}

    return MetaLearner(
        init=init,
        adapt=adapt,
        predict=predict,
        outer_loss=query_outer_loss(adapt, predict),
        meta_grad=gradient_meta_grad(batch_loss, task_map),
    )
