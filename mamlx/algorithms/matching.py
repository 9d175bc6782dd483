"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, NeurIPS 2016).

A query ``x̂`` is labelled by attention over the support set:

    a(x̂, x_i) = softmax_i(s · cos(f(x̂), g(x_i))),   P(y = c | x̂) = Σ_i a(x̂, x_i) 1[y_i = c]

and ``predict`` returns ``log P(y = c | x̂)`` as logits (so the cross-entropy is
the paper's negative log-likelihood). Without full-context embeddings
``f = g = f'``, the shared embedding network. With ``fce_steps > 0``, ``g`` is a
bidirectional LSTM over the support embeddings and ``f`` an attention LSTM with
``K`` processing steps (:class:`~mamlx.models.heads.FullContextEmbedding`);
the result then depends on the order of the support set, as in the paper.

Classes are indexed as in :mod:`mamlx.algorithms.metric_based`: ``S`` columns,
those without support examples at ``-inf``.
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
from mamlx.algorithms.metric_based import class_one_hot, mask_absent
from mamlx.losses import check_label_range
from mamlx.models.adapter import ApplyFn, model
from mamlx.models.heads import FullContextEmbedding
from mamlx.types import Array, Params, PRNGKey

__all__ = ["MatchingState", "cosine_attention", "matching", "matching_log_probs"]


def cosine_attention(query: Array, support: Array, scale: float = 1.0, eps: float = 1e-8) -> Array:
    """Attention ``softmax_i(scale · cos(q, s_i))`` over the support set, ``(Q, S)``.

    Each row sums to one (Vinyals et al. 2016, Eq. 2).

    Example:
      >>> a = cosine_attention(jnp.ones((2, 3)), jnp.eye(3))
      >>> a.sum(-1).tolist()
      [1.0, 1.0]
    """
    q = query.reshape(query.shape[0], -1)
    s = support.reshape(support.shape[0], -1)
    q = q / jnp.sqrt(jnp.sum(q * q, -1, keepdims=True) + eps)
    s = s / jnp.sqrt(jnp.sum(s * s, -1, keepdims=True) + eps)
    return jax.nn.softmax(scale * (q @ s.T), axis=-1)


def matching_log_probs(attention: Array, support_y: Array) -> Array:
    """``log Σ_i a_i 1[y_i = c]`` per class, ``(Q, C)`` with ``C = S``; absent classes ``-inf``.

    Example:
      >>> lp = matching_log_probs(jnp.array([[0.5, 0.25, 0.25]]), jnp.array([0, 1, 1]))
      >>> jnp.exp(lp).round(3).tolist()
      [[0.5, 0.5, 0.0]]
    """
    onehot = class_one_hot(support_y).astype(attention.dtype)
    probs = attention @ onehot
    counts = onehot.sum(0)
    tiny = jnp.finfo(attention.dtype).tiny
    # The inner where keeps log's gradient finite in absent columns.
    return mask_absent(jnp.log(jnp.where(counts > 0, jnp.maximum(probs, tiny), 1.0)), counts)


class MatchingState(NamedTuple):
    """Task state of a Matching Network.

    Attributes:
      params: meta-parameters (``{"embed": ...}`` and ``"fce"`` if used).
      support: support embeddings ``g(x_i)`` (after the support LSTM with FCE).
      raw_support: support embeddings ``f'(x_i)`` (the attention LSTM reads them).
      support_y: support labels.
    """

    params: Params
    support: Array
    raw_support: Array
    support_y: Array


def matching(
    embed_fn: ApplyFn,
    init_fn: Callable[[PRNGKey], Params],
    *,
    scale: float = 1.0,
    fce_steps: int = 0,
    feature_dim: int | None = None,
    task_map: str = "vmap",
) -> MetaLearner:
    """Matching Networks (Vinyals et al., NeurIPS 2016).

    Args:
      embed_fn: ``embed_fn(params, x) -> (B, D)`` flat embeddings ``f'``.
      init_fn: ``init_fn(key) -> params`` of the embedding.
      scale: multiplies the cosine similarities before the softmax (1 in the
        paper; larger values sharpen the attention).
      fce_steps: ``K`` > 0 turns on full-context embeddings with ``K``
        processing steps; 0 (default) uses ``f = g = f'``.
      feature_dim: ``D``, needed for full-context embeddings.
      task_map: ``"vmap"``, ``"map"`` or ``"auto"`` over the task batch (:func:`~mamlx.algorithms.map_tasks`).

    Returns:
      A :class:`MetaLearner` with params ``{"embed": ...[, "fce": ...]}``;
      ``adapt`` returns a :class:`MatchingState`, ``predict`` log-probabilities.

    Example:
      >>> from mamlx.models import model
      >>> from mamlx.models.embedding import ConvEmbedding
      >>> embed_fn, init_fn = model(lambda r: ConvEmbedding(1, filters=8, blocks=2, rngs=r))
      >>> learner = matching(embed_fn, init_fn, fce_steps=2, feature_dim=32)
      >>> params = learner.init(jax.random.PRNGKey(0))
      >>> state = jax.jit(learner.adapt)(params, jnp.ones((4, 8, 8, 1)), jnp.array([0, 1, 0, 1]))
      >>> jax.jit(learner.predict)(state, jnp.ones((3, 8, 8, 1))).shape
      (3, 4)
    """
    check_task_map(task_map)
    if fce_steps < 0:
        raise ValueError(f"fce_steps must be >= 0, got {fce_steps}")
    if fce_steps and feature_dim is None:
        raise ValueError("full-context embeddings need feature_dim")
    fce_fn = fce_init = None
    if fce_steps:
        fce_fn, fce_init = model(
            lambda rngs: FullContextEmbedding(feature_dim, steps=fce_steps, rngs=rngs)
        )

    def init(key: PRNGKey) -> Params:
        k_embed, k_fce = jax.random.split(key)
        params = {"embed": init_fn(k_embed)}
        if fce_init is not None:
            params["fce"] = fce_init(k_fce)
        return params

    def adapt(meta_params: Params, support_x: Array, support_y: Array, steps=None, key=None):
        del steps, key  # no inner optimisation, deterministic
        check_label_range(support_y, support_y.shape[0], "support labels")
        raw = embed_fn(meta_params["embed"], support_x)
        raw = raw.reshape(raw.shape[0], -1)
        g = raw
        if fce_fn is not None:
            g, _ = fce_fn(meta_params["fce"], (raw, raw[:1]))
        return MatchingState(meta_params, g, raw, support_y)

    def predict(state: MatchingState, x: Array) -> Array:
        f = embed_fn(state.params["embed"], x)
        f = f.reshape(f.shape[0], -1)
        if fce_fn is not None:
            _, f = fce_fn(state.params["fce"], (state.raw_support, f))
        return matching_log_probs(cosine_attention(f, state.support, scale), state.support_y)

    outer_loss = query_outer_loss(adapt, predict)

    return gradient_learner(init, adapt, predict, outer_loss, task_map)
