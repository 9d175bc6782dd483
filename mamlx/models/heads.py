"""Learned heads of metric-based few-shot learners (NNX modules).

* :class:`RelationModule`: the learned similarity of Relation Networks (Sung et
  al. 2018): two conv blocks and two fully connected layers scoring a pair of
  concatenated feature maps.
* :class:`FullContextEmbedding`: the full-context embeddings ``g`` and ``f`` of
  Matching Networks (Vinyals et al. 2016, Sec. 2.1.2 and Appendix A).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mamlx.models.embedding import ConvBlock, pooled_size
from mamlx.sharding import varying_like
from mamlx.types import Array


class RelationModule(nnx.Module):
    """Relation module ``g_φ`` of Sung et al. (2018), Fig. 2.

    Input: concatenated feature maps ``[f(class), f(x_query)]`` of shape
    ``(B, h, w, 2C)``; output: relation logits ``(B,)`` (the relation score is
    ``sigmoid(logit)`` in [0, 1]). Architecture: 2 x (3x3 conv ``filters``, batch
    norm, ReLU, 2x2 max-pool) -> FC ``hidden`` + ReLU -> FC 1.

    Args:
      in_shape: ``(h, w, 2C)`` of the concatenated feature maps.
      filters: conv channels (64 in the paper).
      hidden: width of the hidden FC layer (8 in the paper).
      rngs: Flax RNG streams.

    Example:
      >>> rel = RelationModule((7, 7, 128), rngs=nnx.Rngs(0))
      >>> rel(jnp.ones((5, 7, 7, 128))).shape
      (5,)
    """

    def __init__(
        self, in_shape: Sequence[int], *, filters: int = 64, hidden: int = 8, rngs: nnx.Rngs
    ):
        h, w, c = (int(s) for s in in_shape)
        side_h, side_w = pooled_size(h, 2), pooled_size(w, 2)
        if side_h < 1 or side_w < 1:
            raise ValueError(f"feature maps {h}x{w} are too small for two 2x2 max-pools")
        self.blocks = nnx.List(
            [
                ConvBlock(c, filters, pool="max", rngs=rngs),
                ConvBlock(filters, filters, pool="max", rngs=rngs),
            ]
        )
        self.fc1 = nnx.Linear(filters * side_h * side_w, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, 1, rngs=rngs)

    def __call__(self, pairs: Array, mask: Array | None = None) -> Array:
        """Relation logits of ``pairs``; batch-norm statistics over the ``mask``-ed pairs only."""
        return self._head(self.blocks[0](pairs, mask), mask)

    def all_pairs(self, classes: Array, queries: Array, mask: Array | None = None) -> Array:
        """Relation logits ``(Q, C)`` of every pair ``[classes[c], queries[q]]``: the same as
        ``self`` on the ``Q·C`` concatenated pairs (query-major; ``mask`` over them).

        The first convolution is linear in its input channels, so it is applied to the
        ``C`` class maps and the ``Q`` query maps with the two halves of its kernel and
        summed per pair: ``Q + C`` maps convolved instead of ``Q·C`` of twice the channels.

        Example:
          >>> rel = RelationModule((7, 7, 8), filters=4, rngs=nnx.Rngs(0))
          >>> c, q = jnp.ones((3, 7, 7, 4)), jnp.zeros((2, 7, 7, 4))
          >>> pairs = jnp.concatenate([jnp.broadcast_to(c, (2, 3, 7, 7, 4)),
          ...                          jnp.broadcast_to(q[:, None], (2, 3, 7, 7, 4))], -1)
          >>> bool(jnp.allclose(rel.all_pairs(c, q), rel(pairs.reshape(6, 7, 7, 8)).reshape(2, 3)))
          True
        """
        first, half = self.blocks[0], classes.shape[-1]
        by_class = first.convolve(classes, slice(None, half))
        by_query = first.convolve(queries, slice(half, None))
        y = by_query[:, None] + by_class[None]
        y = y.reshape(-1, *y.shape[2:])
        return self._head(first.finish(y, mask), mask).reshape(len(queries), len(classes))

    def _head(self, x: Array, mask: Array | None) -> Array:
        """Everything after the first block: logits ``(B,)``."""
        for block in self.blocks[1:]:
            x = block(x, mask)
        x = jax.nn.relu(self.fc1(x.reshape(x.shape[0], -1)))
        return self.fc2(x)[:, 0]


class FullContextEmbedding(nnx.Module):
    """Full-context embeddings of Matching Networks (Vinyals et al. 2016, Appendix A).

    Support: ``g(x_i) = f'(x_i) + h_fwd_i + h_bwd_i``, a bidirectional LSTM over
    the support embeddings (in the given order). Query: ``K`` steps of an
    attention LSTM,

        ĥ_k, c_k = LSTM(f'(x), [h_{k-1}, r_{k-1}], c_{k-1});  h_k = ĥ_k + f'(x)
        r_{k-1} = Σ_i softmax_i(h_{k-1} · g(x_i)) g(x_i)

    from ``h_0 = f'(x)`` and ``c_0 = 0`` (so the first step already reads the support set:
    ``r_0`` is the read-out of ``h_0``), and ``f(x) = h_K``. The readout ``r`` enters the
    cell as input (next to ``f'(x)``) rather than as part of the hidden state: the gate
    pre-activations are the same linear function of ``(f'(x), h, r)``, so the two forms
    are equivalent.

    Called on ``(support, query)`` embeddings ``(S, D)``, ``(Q, D)``; returns
    ``(g, f)`` with the same shapes.

    Args:
      dim: embedding dimension ``D`` (LSTM hidden size, as in the paper).
      steps: processing steps ``K`` of the attention LSTM.
      rngs: Flax RNG streams.

    Example:
      >>> fce = FullContextEmbedding(8, steps=2, rngs=nnx.Rngs(0))
      >>> g, f = fce((jnp.ones((5, 8)), jnp.ones((3, 8))))
      >>> g.shape, f.shape
      ((5, 8), (3, 8))
    """

    def __init__(self, dim: int, *, steps: int = 5, rngs: nnx.Rngs):
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.forward = nnx.LSTMCell(dim, dim, rngs=rngs)
        self.backward = nnx.LSTMCell(dim, dim, rngs=rngs)
        self.attend = nnx.LSTMCell(2 * dim, dim, rngs=rngs)
        self.steps = steps

    def _run(self, cell: nnx.LSTMCell, xs: Array) -> Array:
        zero = varying_like(jnp.zeros(xs.shape[-1], xs.dtype), xs)
        return jax.lax.scan(lambda carry, x: cell(carry, x), (zero, zero), xs)[1]

    def __call__(self, inputs: tuple[Array, Array]) -> tuple[Array, Array]:
        support, query = inputs
        fwd = self._run(self.forward, support)
        bwd = self._run(self.backward, support[::-1])[::-1]
        g = support + fwd + bwd
        h = query  # h_0 = f'(x)
        c = varying_like(jnp.zeros_like(query), query, support)
        for _ in range(self.steps):
            r = jax.nn.softmax(h @ g.T, axis=-1) @ g  # r_{k-1}, the read-out of h_{k-1}
            (c, h), _ = self.attend((c, h), jnp.concatenate([query, r], axis=-1))
            h = h + query
        return g, h
