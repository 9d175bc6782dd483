"""Conv-4 embedding network of the metric-based few-shot papers.

The embedding used by Matching Networks (Vinyals et al. 2016), Prototypical
Networks (Snell et al. 2017) and Relation Networks (Sung et al. 2018): ``blocks``
blocks of

    3x3 conv (``filters`` channels, SAME padding) -> batch norm -> ReLU -> 2x2 max-pool

On 28x28 Omniglot, four pooled blocks give a 1x1x64 map, the 64-d embedding of
ProtoNets; Relation Networks keep feature maps (pool only in the first two
blocks: 7x7x64). Batch norm runs in training mode (batch statistics of each
call), like the MAML Conv-4, and the blocks are Conv-4's own
(:class:`mamlx.models.conv4.ConvBlock`), so convolutions take the backend's fast
path of :func:`mamlx.models.conv.conv2d` (XLA's CPU convolutions inside
``lax.scan`` were measured 8x slower than the patch-matrix path).
"""

from __future__ import annotations

from flax import nnx

from mamlx.models.conv4 import ConvBlock, max_pool_2x2
from mamlx.types import Array

__all__ = ["ConvBlock", "ConvEmbedding", "max_pool_2x2", "pooled_size"]


def pooled_size(size: int, pools: int) -> int:
    """Side length after ``pools`` floor 2x2 max-pools (28 -> 14 -> 7 -> 3 -> 1).

    Example:
      >>> pooled_size(28, 4)
      1
    """
    for _ in range(pools):
        size //= 2
    return size


class ConvEmbedding(nnx.Module):
    """Conv-4 embedding ``f_φ``: images ``(B, H, W, C)`` -> features.

    ``blocks`` conv blocks (see :class:`ConvBlock`); the first ``pool_blocks``
    (default: all) max-pool. With ``flatten=True`` the output is ``(B, D)``
    with ``D = filters * h * w`` (64 for 28x28 Omniglot with the defaults),
    otherwise the feature maps ``(B, h, w, filters)``.

    Args:
      in_channels: image channels (1 for Omniglot, 3 for mini-ImageNet).
      filters: channels of every conv (64 in the papers).
      blocks: number of conv blocks (4 in the papers).
      pool_blocks: how many leading blocks max-pool (``None``: all; 2 for the
        Relation Network embedding of Sung et al. 2018).
      flatten: return flat vectors instead of feature maps.
      rngs: Flax RNG streams.

    Example:
      >>> import jax
      >>> net = ConvEmbedding(1, rngs=nnx.Rngs(0))
      >>> net(jax.numpy.ones((3, 28, 28, 1))).shape
      (3, 64)
      >>> ConvEmbedding(1, pool_blocks=2, flatten=False, rngs=nnx.Rngs(0))(
      ...     jax.numpy.ones((3, 28, 28, 1))).shape
      (3, 7, 7, 64)
    """

    def __init__(
        self,
        in_channels: int = 1,
        *,
        filters: int = 64,
        blocks: int = 4,
        pool_blocks: int | None = None,
        flatten: bool = True,
        rngs: nnx.Rngs,
    ):
        if blocks < 1 or filters < 1 or in_channels < 1:
            raise ValueError("in_channels, filters and blocks must be positive")
        pool_blocks = blocks if pool_blocks is None else pool_blocks
        if not 0 <= pool_blocks <= blocks:
            raise ValueError(f"pool_blocks must be in [0, {blocks}], got {pool_blocks}")
        channels = [in_channels] + [filters] * blocks
        self.blocks = nnx.List(
            [
                ConvBlock(
                    channels[i],
                    channels[i + 1],
                    pool="max" if i < pool_blocks else "none",
                    rngs=rngs,
                )
                for i in range(blocks)
            ]
        )
        self.flatten = flatten

    def __call__(self, x: Array) -> Array:
        for block in self.blocks:
            x = block(x)
        return x.reshape(x.shape[0], -1) if self.flatten else x
