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

Order of the support set: a few-shot learner must not depend on it. Seeds are
chosen by scores keyed on each example's contents (:func:`seed_scores`) and the
noise is indexed by (class, slot), so permuting ``support_x`` and ``support_y``
together gives the same hallucinations and predictions (up to float rounding).

Noise: ``adapt(..., key=None)`` and ``outer_loss(..., key=None)`` take an optional
PRNG key, from which the seeds' draw and the noise ``z`` come. :func:`mamlx.fit`
passes one derived from each step's key (``meta_grad`` splits it over the tasks) and
:func:`mamlx.evaluate` one per test task, so each step and each task gets fresh
noise. Only without a key (a direct call) is it derived from the support set's
contents, taken as a set (:func:`episode_key`): a deterministic function of the
episode.
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
from mamlx.algorithms.metric_based import class_one_hot, mask_absent, squared_distances
from mamlx.algorithms.protonet import ProtoState
from mamlx.models.adapter import ApplyFn, model
from mamlx.models.mlp import MLP
from mamlx.types import Array, Params, PRNGKey

__all__ = [
    "HallucinationState",
    "episode_key",
    "example_hashes",
    "hallucinate",
    "hallucination",
    "seed_scores",
]


class HallucinationState(NamedTuple):
    """Task state: the :class:`ProtoState` and the hallucinated examples ``(C, M, D)``."""

    proto: ProtoState
    hallucinated: Array


_GOLDEN = 2654435761  # Knuth's multiplicative constant, 2**32 / golden ratio
_SALTS = (0x9E3779B9, 0x7F4A7C15)  # two independent 32-bit hashes: a 64-bit example id


def _fmix32(h: Array) -> Array:
    """MurmurHash3's 32-bit finaliser: a bijective, well-mixing map of uint32 words."""
    h = h ^ (h >> jnp.uint32(16))
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> jnp.uint32(13))
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> jnp.uint32(16))


def example_hashes(x: Array) -> Array:
    """``(N, 2)`` uint32 content hashes of the examples ``x[i]`` (a 64-bit id per example).

    Each row depends only on that example's float32 bit pattern, not on its
    position, so permuting ``x`` along the first axis permutes the hashes the same
    way. Wrapping integer sums make it exact under ``jit``, ``vmap`` and eager
    execution.

    Example:
      >>> h = example_hashes(jnp.array([[1.0, 2.0], [3.0, 4.0]]))
      >>> h.shape, bool((example_hashes(jnp.array([[3.0, 4.0]]))[0] == h[1]).all())
      ((2, 2), True)
    """
    x = jax.lax.stop_gradient(jnp.asarray(x)).astype(jnp.float32)
    n = x.shape[0] if x.ndim else 1
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(n, -1)
    pos = jnp.arange(bits.shape[1], dtype=jnp.uint32) * jnp.uint32(_GOLDEN)
    cols = [
        _fmix32(jnp.sum(_fmix32(bits ^ (pos + jnp.uint32(salt))), axis=1, dtype=jnp.uint32))
        for salt in _SALTS
    ]
    return jnp.stack(cols, axis=-1)


def episode_key(x: Array, seed: int = 0) -> PRNGKey:
    """A PRNG key derived from a support set's contents, independent of its order.

    The per-example hashes of :func:`example_hashes` are combined with wrapping
    integer sums, which are commutative: the key is a function of the *set* of
    examples ``x[i]`` (the same for any permutation along the first axis) and is
    exactly reproducible under ``jit``, ``vmap`` and eager execution.

    Example:
      >>> a = episode_key(jnp.ones(3)); b = episode_key(jnp.zeros(3))
      >>> bool((jax.random.key_data(a) != jax.random.key_data(b)).any())
      True
      >>> x, data = jnp.arange(6.0).reshape(3, 2), jax.random.key_data
      >>> bool((data(episode_key(x)) == data(episode_key(x[::-1]))).all())
      True
    """
    return _key_from_hashes(example_hashes(x), seed)


def _key_from_hashes(hashes: Array, seed: int = 0) -> PRNGKey:
    # Integer sums wrap modulo 2**32 and are associative and commutative, so the
    # key is the same under any reduction order and any order of the examples.
    h = _fmix32(hashes + jnp.uint32(_GOLDEN))
    key = jax.random.key(seed)
    for total in jnp.sum(h, axis=0, dtype=jnp.uint32):
        key = jax.random.fold_in(key, total)
    return key


def seed_scores(key: PRNGKey, x: Array, m: int) -> Array:
    """``(N, m)`` uniforms, one per example and hallucination slot, keyed by content.

    The score of example ``i`` in slot ``j`` depends only on ``key``, ``j`` and the
    contents of ``x[i]`` (:func:`example_hashes`), never on ``i``: the arg-max over
    a class's examples picks the same seed example whatever the order of the
    support set, and, since distinct examples get independent uniforms, it is a
    uniform draw among the class's examples.

    Example:
      >>> x = jnp.arange(6.0).reshape(3, 2)
      >>> s = seed_scores(jax.random.key(0), x, 4)
      >>> s.shape, bool((seed_scores(jax.random.key(0), x[::-1], 4) == s[::-1]).all())
      ((3, 4), True)
    """
    return _scores_from_hashes(key, example_hashes(x), m)


def _scores_from_hashes(key: PRNGKey, hashes: Array, m: int) -> Array:
    def one(h: Array) -> Array:
        k = jax.random.fold_in(jax.random.fold_in(key, h[0]), h[1])
        return jax.random.uniform(k, (m,))

    return jax.vmap(one)(hashes)


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
      x, y, steps=None, key=None)`` returns a :class:`HallucinationState`. The noise
      comes from ``key``; without one, from :func:`episode_key` of the support set.

    Example:
      >>> from mamlx.models import model
      >>> from mamlx.models.embedding import ConvEmbedding
      >>> embed_fn, init_fn = model(lambda r: ConvEmbedding(1, filters=8, blocks=3, rngs=r))
      >>> learner = hallucination(embed_fn, init_fn, feature_dim=8, num_hallucinated=2)
      >>> params = learner.init(jax.random.PRNGKey(0))
      >>> state = jax.jit(learner.adapt)(params, jnp.ones((4, 8, 8, 1)), jnp.array([0, 1, 0, 1]))
      >>> state.hallucinated.shape, jax.jit(learner.predict)(state, jnp.ones((3, 8, 8, 1))).shape
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
            hashes = example_hashes(support_x)  # once, for the default key and the seeds
            key = _key_from_hashes(hashes) if key is None else key
            k_seed, k_noise = jax.random.split(key)
            # Uniform seed among the class's support examples: arg-max of masked
            # uniforms keyed by each example's contents, not its position, so a
            # permutation of the support set picks the same seeds (noise is per class).
            u = _scores_from_hashes(k_seed, hashes, m).T  # (m, S), as seed_scores
            seed_idx = jnp.argmax(jnp.where(onehot.T[:, None, :] > 0, u[None], -1.0), axis=-1)
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
