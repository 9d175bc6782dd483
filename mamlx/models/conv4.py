"""Conv-4: the four-block convolutional backbone of MAML (Finn et al., 2017).

Each block is a 3x3 convolution with ``filters`` channels, batch norm and ReLU,
then either a stride-2 convolution (``pool='stride'``, MAML's Omniglot variant)
or a 2x2 max-pool (``pool='max'``, MAML's mini-ImageNet variant); a linear head
maps the flattened features to ``ways`` logits. Convolutions go through
:func:`mamlx.models.conv.conv2d`, fast on CPU for per-task (vmapped) kernels.

Batch norm is transductive by default, as in MAML: it always normalises with the
statistics of the batch it is given (the support set while adapting, the query
set when evaluating). With ``transductive=False`` it keeps running averages and,
after ``model.eval()``, uses them instead.

Reference: Finn, Abbeel, Levine. "Model-Agnostic Meta-Learning for Fast
Adaptation of Deep Networks." ICML 2017.

Example:
    >>> from flax import nnx
    >>> model = Conv4(ways=5, in_shape=(28, 28, 1), rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((10, 28, 28, 1))).shape
    (10, 5)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from mamlx.models.conv import conv2d, conv2d_moments, moments_from_patches

Array = jax.Array
_ModuleList = getattr(nnx, "List", list)  # nnx.List from flax 0.12 on


def max_pool_2x2(x: Array) -> Array:
    """2x2 max-pool with stride 2 and VALID padding (a trailing odd row/column is dropped).

    Each window's four values are gathered on a last axis and the largest is picked by a
    one-hot mask of its (first) ``argmax``: the derivatives of any order are cheap
    elementwise products (``reduce_window``'s are scatters), and the whole cotangent of a
    window goes to one element. ``max``'s own derivative would find the maximum again by
    equality with the forward result and divide by the number of equal elements: a
    compiled program that recomputes the window in another rounding (XLA:CPU did, at
    ``--xla_backend_optimization_level=0`` and on 720-image Siamese batches) finds none
    and makes 0/0 = NaN gradients.
    """
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c)
    x = x.transpose(0, 1, 3, 5, 2, 4).reshape(n, h // 2, w // 2, c, 4)
    pick = jax.nn.one_hot(jnp.argmax(jax.lax.stop_gradient(x), axis=-1), 4, dtype=x.dtype)
    return jnp.sum(x * pick, axis=-1)


def _batch_moments(x: Array, mask: Array | None, dt) -> tuple[Array, Array]:
    """Mean and variance of ``x`` over all but its last axis (of the ``mask``'s examples)."""
    flat = x.reshape(-1, x.shape[-1]).astype(dt)
    if mask is None:
        w = jnp.full((flat.shape[0],), 1.0 / flat.shape[0], dt)
    else:
        rows = jnp.broadcast_to(mask.reshape((-1,) + (1,) * (x.ndim - 2)), x.shape[:-1])
        w = rows.reshape(-1).astype(dt)
        w = w / jnp.maximum(w.sum(), 1.0)
    mean = w @ flat
    return mean, jnp.maximum(w @ (flat * flat) - mean * mean, 0.0)


def batch_norm(
    norm: nnx.BatchNorm,
    x: Array,
    use_running_average: bool | None = None,
    mask: Array | None = None,
    moments: tuple[Array, Array] | None = None,
) -> Array:
    """Apply ``norm`` (an ``nnx.BatchNorm`` over the last axis) to ``x``, as ``norm(x)`` does.

    Same statistics (``E[x²] − E[x]²``, clipped at 0, computed in at least float32 so that
    bfloat16 / float16 inputs do not cancel), running-average update and normalisation as
    Flax's BatchNorm, with the batch sums written as matrix-vector
    products: XLA's CPU backend runs those (and their transposes in the backward
    pass) several times faster than reductions over the batch and spatial axes.

    Args:
      norm: the module holding ``scale``, ``bias`` and the running ``mean``/``var``.
      x: features, shape ``(..., C)``.
      use_running_average: ``None`` means ``norm.use_running_average``.
      mask: optional ``(N,)`` booleans over the leading axis: batch statistics come
        from the ``True`` examples only (all examples are normalised). At least one
        must be ``True`` (all ``False`` gives mean 0 and variance 0).
      moments: optional batch ``(mean, var)`` of ``x`` computed by the caller (with
        ``mask`` already applied, e.g. by :func:`mamlx.models.conv.conv2d_moments`); used,
        and the running averages updated from them, instead of computing them from ``x``.
        Ignored with running averages.

    Returns:
      The normalised features, shape of ``x``.
    """
    if use_running_average is None:
        use_running_average = norm.use_running_average
    if use_running_average:
        dt = jnp.promote_types(x.dtype, norm.mean[...].dtype)
        mean, var = norm.mean[...].astype(dt), norm.var[...].astype(dt)
    else:
        dt = jnp.promote_types(x.dtype, jnp.float32)  # as Flax: statistics never in 16 bits
        if moments is None:
            mean, var = _batch_moments(x, mask, dt)
        else:
            mean, var = (jnp.asarray(m, dt) for m in moments)
        m = norm.momentum
        for stat, batch in ((norm.mean, mean), (norm.var, var)):  # kept in the stat's dtype
            old = stat[...]
            stat[...] = jax.lax.stop_gradient(m * old + (1 - m) * batch).astype(old.dtype)
    mul = jax.lax.rsqrt(var + norm.epsilon)
    if norm.scale is not None:
        mul = mul * norm.scale[...]
    y = (x - mean) * mul
    return y + norm.bias[...] if norm.bias is not None else y


class ConvBlock(nnx.Module):
    """3x3 convolution, batch norm, ReLU, then stride-2 downsampling or a 2x2 max-pool."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        pool: str = "stride",
        transductive: bool = True,
        conv_impl: str | None = None,
        rngs: nnx.Rngs,
    ):
        """Build the block.

        Args:
            in_features: Input channels.
            out_features: Output channels (filters).
            pool: ``'stride'`` (stride-2 convolution), ``'max'`` (2x2 max-pool) or
                ``'none'`` (keep the resolution).
            transductive: Normalise with batch statistics even in eval mode.
            conv_impl: Passed to :func:`~mamlx.models.conv.conv2d` (``None``: default).
            rngs: Random number streams for initialisation.
        """
        if pool not in ("stride", "max", "none"):
            raise ValueError(f"pool must be 'stride', 'max' or 'none', got {pool!r}")
        init = jax.nn.initializers.glorot_uniform()
        self.kernel = nnx.Param(init(rngs.params(), (3, 3, in_features, out_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,)))
        self.norm = nnx.BatchNorm(out_features, use_running_average=False, momentum=0.9, rngs=rngs)
        self.pool = pool
        self.transductive = transductive
        self.conv_impl = conv_impl

    def __call__(self, x: Array, mask: Array | None = None) -> Array:
        """Apply the block to ``(N, H, W, C)`` images.

        ``mask`` (``(N,)`` booleans) restricts the batch statistics to some images.
        On a CPU, a 3x3 convolution on one input channel (the first block on gray images,
        taps-major ``'patches'``) hands batch norm its output's statistics computed from the
        patches (:func:`~mamlx.models.conv.conv2d_moments`; the same values up to rounding): on
        2 CPU cores the block's forward pass on 300 images runs 2x faster, its gradient
        1.05-1.4x (``benchmarks/results/conv_moments_cpu.txt``).
        """
        batch_stats = self.transductive or not self.norm.use_running_average
        if batch_stats and moments_from_patches(self.kernel[...], self.conv_impl):
            return self.call_with_patch_statistics(x, mask)
        return self.finish(self.convolve(x), mask)

    def call_with_patch_statistics(self, x: Array, mask: Array | None = None) -> Array:
        """The block with batch norm's statistics taken from the convolution's taps-major
        patches (:func:`~mamlx.models.conv.conv2d_moments`, ``kh * kw * Cin <= 32``), as
        ``__call__`` does where :func:`~mamlx.models.conv.moments_from_patches` says so."""
        # boolean mask -> image weights: the row weights batch_norm gives the mask's images
        weights = None if mask is None else mask / jnp.maximum(jnp.sum(mask), 1)
        y, mean, var = conv2d_moments(
            x, self.kernel[...], weights, stride=self.stride, padding="SAME"
        )
        return self.finish(y, mask, (mean, var))

    def convolve(self, x: Array, channels: slice | None = None) -> Array:
        """The block's convolution (no bias) of ``x``, with the kernel's input ``channels``
        only when given (``x`` then has that many channels)."""
        kernel = self.kernel[...] if channels is None else self.kernel[:, :, channels]
        return conv2d(x, kernel, stride=self.stride, padding="SAME", impl=self.conv_impl)

    @property
    def stride(self) -> int:
        """The convolution's stride: 2 with ``pool='stride'``, else 1."""
        return 2 if self.pool == "stride" else 1

    def finish(
        self, y: Array, mask: Array | None = None, moments: tuple[Array, Array] | None = None
    ) -> Array:
        """The rest of the block on a convolution's output ``y``: bias, batch norm, ReLU, pool.

        ``moments``: the batch ``(mean, var)`` of ``y`` where the caller has them (of the
        ``mask``'s images); batch norm computes them from ``y`` otherwise."""
        bias = self.bias[...]
        if moments is not None:
            moments = (moments[0] + bias, moments[1])
        y = batch_norm(self.norm, y + bias, False if self.transductive else None, mask, moments)
        y = jax.nn.relu(y)
        return max_pool_2x2(y) if self.pool == "max" else y


READOUTS = ("flatten", "mean")


def _out_size(size: int, pool: str, blocks: int) -> int:
    for _ in range(blocks):
        size = math.ceil(size / 2) if pool == "stride" else size // 2
    return size


class Conv4(nnx.Module):
    """Four conv blocks and a linear head (MAML's Omniglot / mini-ImageNet network).

    Omniglot: ``Conv4(ways, in_shape=(28, 28, 1), filters=64, pool='stride')``;
    mini-ImageNet: ``Conv4(ways, in_shape=(84, 84, 3), filters=32, pool='max')``.

    The head reads the flattened last feature map by default (2x2x64 = 256 inputs on
    Omniglot). MAML's reference code flattens only for mini-ImageNet; on Omniglot it
    averages the map over space (``readout='mean'``: 64 inputs). Every result in
    ``benchmarks/results`` used ``'flatten'``.
    """

    def __init__(
        self,
        ways: int,
        *,
        in_shape: tuple[int, int, int] = (28, 28, 1),
        filters: int = 64,
        pool: str = "stride",
        blocks: int = 4,
        transductive: bool = True,
        conv_impl: str | None = None,
        readout: str = "flatten",
        rngs: nnx.Rngs,
    ):
        """Build the network.

        Args:
            ways: Number of output logits (classes per task).
            in_shape: ``(H, W, C)`` of the input images; sizes the linear head.
            filters: Channels of every convolution (64 Omniglot, 32 mini-ImageNet).
            pool: ``'stride'`` or ``'max'``, see :class:`ConvBlock`.
            blocks: Number of conv blocks.
            transductive: Batch norm uses batch statistics in eval mode too (MAML).
            conv_impl: Convolution implementation, see :func:`~mamlx.models.conv.conv2d`
                (``None``: :func:`~mamlx.models.conv.default_impl`, which is XLA's on
                GPU; for a learner that adapts the kernels per task under ``vmap``
                pass ``default_impl(batched_kernels=True)``, as
                :func:`mamlx.experiments.fewshot_model` does).
            readout: ``'flatten'`` the last feature map into the head, or take its
                spatial ``'mean'`` (MAML's Omniglot network).
            rngs: Random number streams for initialisation.
        """
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        self.readout = readout
        h, w, c = in_shape
        chans = [c] + [filters] * blocks
        self.blocks = _ModuleList(
            [
                ConvBlock(
                    chans[i],
                    chans[i + 1],
                    pool=pool,
                    transductive=transductive,
                    conv_impl=conv_impl,
                    rngs=rngs,
                )
                for i in range(blocks)
            ]
        )
        features = _out_size(h, pool, blocks) * _out_size(w, pool, blocks) * filters
        if features == 0:
            raise ValueError(f"in_shape {in_shape} is too small for {blocks} {pool} blocks")
        if readout == "mean":
            features = filters
        self.head = nnx.Linear(features, ways, rngs=rngs)

    def features(self, x: Array) -> Array:
        """Features before the head, shape ``(N, features)``: flattened or spatial means."""
        for block in self.blocks:
            x = block(x)
        if self.readout == "mean":
            return jnp.mean(x, axis=(1, 2))
        return x.reshape(x.shape[0], -1)

    def __call__(self, x: Array) -> Array:
        """Logits for ``(N, H, W, C)`` images, shape ``(N, ways)``."""
        return self.head(self.features(x))
