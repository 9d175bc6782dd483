"""Low-shot learning from imaginary data (Wang, Girshick, Hebert & Hariharan, CVPR 2018).

A hallucinator ``G`` turns a seed example's embedding and noise into extra
training examples of the seed's class, and the prototypical classifier is
meta-trained end to end through ``G``:

    x̃ = G(f_φ(x_seed), z),  z ~ N(0, I);   p_c = mean({f_φ(x_i): y_i = c} ∪ {x̃ of class c})

then ``logits_c(x) = −‖f_φ(x) − p_c‖²`` as in :mod:`mamlx.algorithms.protonet`.
``G`` is an MLP on ``[e, z]`` with a residual connection, ``G(e, z) = e +
MLP([e, z])`` (our parametrisation: hallucinations start near their seed).
Seeds are drawn uniformly among the class's support examples. With
``num_hallucinated=0`` the learner is exactly a Prototypical Network.

Noise: ``adapt(..., key=None)`` takes an optional PRNG key; without one (as in
:func:`mamlx.evaluate` and the training loop) the key is derived from the
support set's contents, so every task gets its own noise and results stay
deterministic functions of the episode.
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
from mamlx.algorithms.protonet import (
    ProtoState,
    class_one_hot,
    mask_absent,
    squared_distances,
)
from mamlx.models.adapter import ApplyFn, model
from mamlx.models.mlp import MLP
from mamlx.types import Array, Params, PRNGKey

__all__ = ["HallucinationState", "episode_key", "hallucinate", "hallucination"]


class HallucinationState(NamedTuple):
    """Task state: the :class:`ProtoState` and the hallucinated examples ``(C, M, D)``."""

    proto: ProtoState
    hallucinated: Array


def episode_key(x: Array, seed: int = 0) -> PRNGKey:
    """A PRNG key derived from an array's contents (a different key per support set).

    Hashes the float32 bit patterns with wrapping integer sums (one plain, one
    position-weighted), so the key is exactly reproducible under ``jit``,
    ``vmap`` and eager execution.

    Example:
      >>> a = episode_key(jnp.ones(3)); b = episode_key(jnp.zeros(3))
      >>> bool((jax.random.key_data(a) != jax.random.key_data(b)).any())
      True
    """
    # Integer sums wrap modulo 2**32 and are associative, so the key is the same
    # under jit, eager execution and any reduction order (float sums are not).
    bits = jax.lax.bitcast_convert_type(jax.lax.stop_gradient(x).astype(jnp.float32), jnp.uint32)
    bits = bits.reshape(-1)
    weights = (jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(2654435761)) | jnp.uint32(1)
    key = jax.random.key(seed)
    for h in (jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * weights, dtype=jnp.uint32)):
        key = jax.random.fold_in(key, h)
    return key


def hallucinate(gen_fn: ApplyFn, gen_params: Params, seeds: Array, noise: Array) -> Array:
    """Hallucinated examples ``G(e, z) = e + MLP([e, z])``, the seeds' shape.

    Args:
      gen_fn: the MLP ``gen_fn(params, [e, z]) -> (..., D)``.
      gen_params: its parameters.
      seeds: seed embeddings ``(..., D)``.
      noise: ``(..., D_z)`` noise.

    Returns:
      ``(..., D)`` hallucinated embeddings.

    Example:
      >>> from mamlx.models import model, MLP
      >>> gen_fn, gen_init = model(lambda r: MLP((6, 8, 4), rngs=r))
      >>> hallucinate(gen_fn, gen_init(jax.random.key(0)), jnp.ones((5, 4)), jnp.ones((5, 2))).shape
      (5, 4)
    """
    lead = seeds.shape[:-1]
    inputs = jnp.concatenate([seeds, noise.astype(seeds.dtype)], axis=-1)
    out = gen_fn(gen_params, inputs.reshape(-1, inputs.shape[-1]))
    return seeds + out.reshape((*lead, seeds.shape[-1]))


def hallucination(
    embed_fn: ApplyFn,
    init_fn: Callable[[PRNGKey], Params],
    *,
    feature_dim: int,
    num_hallucinated: int = 1,
    noise_dim: int | None = None,
    hidden: int | None = None,
    task_map: str = "vmap",
) -> MetaLearner:
    """Prototypical Network with a meta-learned hallucinator (Wang et al., CVPR 2018).

    Args:
      embed_fn: ``embed_fn(params, x) -> (B, feature_dim)`` flat embeddings.
      init_fn: ``init_fn(key) -> params`` of the embedding.
      feature_dim: embedding size ``D``.
      num_hallucinated: hallucinated examples added per class (0: plain ProtoNet).
      noise_dim: size of ``z`` (default ``D``).
      hidden: hidden width of the 3-layer MLP (default ``D``).
      task_map: ``"vmap"``, ``"map"`` or ``"auto"`` over the task batch (:func:`~mamlx.algorithms.map_tasks`).

    Returns:
      A :class:`MetaLearner` with params ``{"embed", "generator"}``; ``adapt(params,
      x, y, steps=None, key=None)`` returns a :class:`HallucinationState`.

    Example:
      >>> from mamlx.models import model
      >>> from mamlx.models.embedding import ConvEmbedding
      >>> embed_fn, init_fn = model(lambda r: ConvEmbedding(1, filters=8, blocks=3, rngs=r))
      >>> learner = hallucination(embed_fn, init_fn, feature_dim=8, num_hallucinated=2)
      >>> params = learner.init(jax.random.PRNGKey(0))
      >>> state = learner.adapt(params, jnp.ones((4, 8, 8, 1)), jnp.array([0, 1, 0, 1]))
      >>> state.hallucinated.shape, learner.predict(state, jnp.ones((3, 8, 8, 1))).shape
      ((4, 2, 8), (3, 4))
    """
    check_task_map(task_map)
    if num_hallucinated < 0:
        raise ValueError(f"num_hallucinated must be >= 0, got {num_hallucinated}")
    noise_dim = feature_dim if noise_dim is None else noise_dim
    hidden = feature_dim if hidden is None else hidden
    gen_fn, gen_init = model(
        lambda rngs: MLP((feature_dim + noise_dim, hidden, hidden, feature_dim), rngs=rngs)
    )
    m = num_hallucinated

    def init(key: PRNGKey) -> Params:
        k_embed, k_gen = jax.random.split(key)
        return {"embed": init_fn(k_embed), "generator": gen_init(k_gen)}

    def adapt(meta_params: Params, support_x: Array, support_y: Array, steps=None, key=None):
        del steps
        emb = embed_fn(meta_params["embed"], support_x)
        emb = emb.reshape(emb.shape[0], -1)
        onehot = class_one_hot(support_y).astype(emb.dtype)  # (S, C)
        counts = onehot.sum(0)
        sums = onehot.T @ emb  # (C, D)
        num_c = onehot.shape[1]
        fake = jnp.zeros((num_c, m, emb.shape[-1]), emb.dtype)
        if m:
            key = episode_key(support_x) if key is None else key
            k_seed, k_noise = jax.random.split(key)
            # Uniform seed among the class's support examples: arg-max of masked uniforms.
            u = jax.random.uniform(k_seed, (num_c, m, emb.shape[0]))
            seed_idx = jnp.argmax(jnp.where(onehot.T[:, None, :] > 0, u, -1.0), axis=-1)
            z = jax.random.normal(k_noise, (num_c, m, noise_dim), emb.dtype)
            fake = hallucinate(gen_fn, meta_params["generator"], emb[seed_idx], z)
            present = (counts > 0).astype(emb.dtype)[:, None, None]
            fake = fake * present
            sums = sums + fake.sum(1)
        protos = sums / jnp.maximum(counts + m * (counts > 0), 1)[:, None]
        return HallucinationState(ProtoState(meta_params, protos, counts), fake)

    def predict(state: HallucinationState, x: Array) -> Array:
        emb = embed_fn(state.proto.params["embed"], x)
        return mask_absent(-squared_distances(emb, state.proto.prototypes), state.proto.counts)

    outer_loss = query_outer_loss(adapt, predict)

    return gradient_learner(init, adapt, predict, outer_loss, task_map)
