"""2-D convolution with a switchable implementation, fast for per-task kernels.

MAML adapts every task's weights, so after ``jax.vmap`` over tasks each task
convolves with its own kernel. XLA lowers that to a batched-kernel (grouped)
convolution whose derivatives are slow on CPU. The ``'patches'`` implementation
writes the convolution as image patches times a weight matrix::

    y[n, i, j, :] = sum_{a, b, c} x_pad[n, s*i + a, s*j + b, c] * w[a, b, c, :]
                  = im2col(x)[n, i, j, :] @ w.reshape(kh * kw * cin, cout)

so the task axis becomes a batch dimension of a matrix product (batched GEMM,
which XLA's CPU backend runs well). Patches are cut with ``kh * kw`` strided
slices, and their adjoint (``col2im``) is a custom VJP that sums the taps
phase by phase in one fused pass, instead of the ``kh * kw`` full-size padded
copies that plain autodiff of the slices produces. ``im2col`` and ``col2im``
are each other's VJP, so derivatives of any order stay slices, sums and matrix
products. With few input channels (``kh * kw * Cin <= 32``, the first layer on
images) the patches are built taps-major instead, ``(kh * kw * Cin, N * Ho * Wo)``,
so that the weight gradient is a plain matrix product (that layer's weight
gradient runs 2x faster on CPU, see :func:`_conv_taps_major`).

Forward mode: JAX cannot apply ``jax.jvp`` (nor ``jax.jacfwd``, ``jax.hessian``,
``jax.linearize``) to a custom-VJP function, so ``'patches'`` supports reverse
mode of any order and ``vmap``, and forward mode only where no tangent reaches
the input of a layer with ``kh * kw * Cin`` above 32 (derivatives with respect
to the images or to earlier layers' weights raise JAX's ``TypeError: can't apply
forward-mode autodiff (jvp) to a custom_vjp function``; ``jax.linearize`` raises
when its linear function is called; the taps-major first layer is plain slices).
For forward mode pick ``'patches_autodiff'`` (the same patches through plain
autodiff; Omniglot 5-way 1-shot on 2 CPU cores: MAML 8% slower, first-order MAML
the same, ``benchmarks/results/throughput_conv_impls_cpu.md``) or ``'xla'``
with ``impl=`` (``Conv4(conv_impl=...)``, ``mamlx train --conv-impl``). The
default depends on the backend only (:func:`default_impl`): no global setting
and no environment variable changes it. (A forward-mode rule would need a
custom transpose for the tangent, which JAX offers only without a batching
rule.)

Example:
    >>> import jax.numpy as jnp
    >>> x = jnp.ones((2, 28, 28, 1)); w = jnp.ones((3, 3, 1, 64))
    >>> conv2d(x, w, stride=2, padding="SAME").shape
    (2, 14, 14, 64)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
Padding = str | Sequence[tuple[int, int]]
IMPLS = ("xla", "patches", "patches_autodiff")


def default_impl(backend: str | None = None, *, batched_kernels: bool = False) -> str:
    """Return the implementation ``conv2d`` uses by default on ``backend``.

    Args:
        backend: A JAX backend name; ``None`` means ``jax.default_backend()``.
        batched_kernels: Whether the kernels will carry a task axis under
            ``vmap`` (learners that adapt the convolutions per task: MAML,
            Reptile, Meta-SGD, the meta-LSTM). XLA turns those into grouped
            convolutions, slow on CPU and GPU, so ``'patches'`` is their default
            there (H200, Omniglot 5-way 1-shot MAML step: 2.3x faster than
            cuDNN's grouped convolution, ``benchmarks/results/throughput_gpu_h200.md``).
            TPUs were not measured and keep ``'xla'``.

    Returns:
        ``'patches'`` on CPU, and on GPU for batched kernels; ``'xla'``
        otherwise (cuDNN for shared kernels on GPU, the TPU convolution units).
        Decided by these arguments alone: to use another implementation, pass
        ``impl=`` to :func:`conv2d` (``conv_impl=`` to the models).

    Example:
        >>> default_impl("cpu"), default_impl("gpu"), default_impl("gpu", batched_kernels=True)
        ('patches', 'xla', 'patches')
    """
    backend = backend or jax.default_backend()
    if backend == "cpu" or (batched_kernels and backend != "tpu"):
        return "patches"
    return "xla"


def _pads(
    spatial: tuple[int, int], ksize: tuple[int, int], stride: int, padding: Padding
) -> tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        return tuple(lax.padtype_to_pads(spatial, ksize, (stride, stride), padding.upper()))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _out_size(size: int, k: int, stride: int, pad: tuple[int, int]) -> int:
    return (size + pad[0] + pad[1] - k) // stride + 1


def _tap_slices(x: Array, axes: tuple[int, int], ksize, stride, pads) -> list[Array]:
    """The ``kh * kw`` strided views of padded ``x`` that each kernel tap reads.

    ``axes`` are the two spatial axes of ``x``; tap ``(a, b)`` of output ``(i, j)``
    reads padded position ``(stride * i + a, stride * j + b)``. Ordered ``a``-major.
    """
    (kh, kw), (ah, aw) = ksize, axes
    ho, wo = (
        _out_size(x.shape[ax], k, stride, p) for ax, k, p in zip(axes, ksize, pads, strict=True)
    )
    cfg = [(0, 0, 0)] * x.ndim
    cfg[ah], cfg[aw] = (*pads[0], 0), (*pads[1], 0)
    # lax.pad accepts negative padding (a crop) where SAME/explicit pads overhang.
    xp = lax.pad(x, jnp.zeros((), x.dtype), cfg)
    strides = [1] * x.ndim
    strides[ah] = strides[aw] = stride
    taps = []
    for a in range(kh):
        for b in range(kw):
            start, limit = [0] * x.ndim, list(xp.shape)
            start[ah], limit[ah] = a, a + (ho - 1) * stride + 1
            start[aw], limit[aw] = b, b + (wo - 1) * stride + 1
            taps.append(lax.slice(xp, start, limit, strides))
    return taps


def _im2col_impl(x: Array, ksize, stride, pads) -> Array:
    cols = _tap_slices(x, (1, 2), ksize, stride, pads)
    return jnp.concatenate(cols, axis=-1) if len(cols) > 1 else cols[0]


def _fold_taps(d: Array, axis: int, size: int, stride: int, pad: tuple[int, int]) -> Array:
    """Adjoint of strided tap extraction along one spatial axis.

    ``d`` has the output positions on ``axis`` and the taps on ``axis + 1``; tap
    ``t`` of output ``o`` read padded input ``stride * o + t``. Returns the sum
    of the taps on the input positions (``size`` of them) on ``axis``.
    """
    k, o = d.shape[axis + 1], d.shape[axis]
    qmax = (k - 1) // stride
    phases = []
    for p in range(stride):
        acc = None
        for t in range(p, k, stride):
            q = t // stride
            piece = lax.index_in_dim(d, t, axis + 1, keepdims=False)
            cfg = [(0, 0, 0)] * piece.ndim
            cfg[axis] = (q, qmax - q, 0)
            piece = lax.pad(piece, jnp.zeros((), d.dtype), cfg)
            acc = piece if acc is None else acc + piece
        if acc is None:  # stride > kernel: this phase is never read
            shape = list(d.shape)
            del shape[axis + 1]
            shape[axis] = o + qmax
            acc = jnp.zeros(shape, d.dtype)
        phases.append(acc)
    # Interleave phases: padded index m * stride + p.
    y = jnp.stack(phases, axis=axis + 1) if stride > 1 else phases[0]
    shape = list(y.shape)
    if stride > 1:
        shape[axis : axis + 2] = [shape[axis] * stride]
        y = y.reshape(shape)
    full = y.shape[axis]
    cfg = [(0, 0, 0)] * y.ndim
    cfg[axis] = (-pad[0], pad[0] + size - full, 0)  # crop the padding, extend if short
    return lax.pad(y, jnp.zeros((), y.dtype), cfg)


def _col2im_impl(cols: Array, xshape, ksize, stride, pads) -> Array:
    n, h, w, c = xshape
    kh, kw = ksize
    _, ho, wo, _ = cols.shape
    d = cols.reshape(n, ho, wo, kh, kw, c).transpose(0, 1, 3, 2, 4, 5)  # n, ho, kh, wo, kw, c
    d = _fold_taps(d, 1, h, stride, pads[0])  # n, h, wo, kw, c
    return _fold_taps(d, 2, w, stride, pads[1])  # n, h, w, c


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _im2col(x: Array, ksize, stride, pads) -> Array:
    return _im2col_impl(x, ksize, stride, pads)


def _im2col_fwd(x, ksize, stride, pads):
    return _im2col_impl(x, ksize, stride, pads), x.shape


def _im2col_bwd(ksize, stride, pads, xshape, g):
    return (_col2im(g, xshape, ksize, stride, pads),)


_im2col.defvjp(_im2col_fwd, _im2col_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _col2im(cols: Array, xshape, ksize, stride, pads) -> Array:
    return _col2im_impl(cols, xshape, ksize, stride, pads)


def _col2im_fwd(cols, xshape, ksize, stride, pads):
    return _col2im_impl(cols, xshape, ksize, stride, pads), None


def _col2im_bwd(xshape, ksize, stride, pads, _, g):
    return (_im2col(g, ksize, stride, pads),)


_col2im.defvjp(_col2im_fwd, _col2im_bwd)


def im2col(x: Array, ksize: tuple[int, int], *, stride: int = 1, padding: Padding = "SAME"):
    """Cut ``x`` (NHWC) into patches ``(N, Ho, Wo, kh * kw * C)``, tap-major.

    The last axis is ordered ``(kh, kw, C)``, matching an HWIO kernel reshaped to
    ``(kh * kw * C, O)``. Its VJP is the fused ``col2im`` and vice versa.

    Args:
        x: Images, shape ``(N, H, W, C)``.
        ksize: Kernel height and width.
        stride: Stride in both spatial dimensions.
        padding: ``'SAME'``, ``'VALID'`` or two ``(low, high)`` pairs.

    Returns:
        The patches.
    """
    pads = _pads(x.shape[1:3], tuple(ksize), stride, padding)
    return _im2col(x, tuple(ksize), int(stride), pads)


# Below this many patch columns (kh * kw * Cin) the patches are built taps-major.
# Measured on CPU: 9 (Omniglot) and 27 (RGB) columns gain 2x on the first layer's weight
# gradient; 576 (64 channels) loses 18-27% of a first-order MAML step (its input gradient then goes
# through autodiff of the slices). Sizes in between were not measured.
TAPS_MAJOR_MAX_COLUMNS = 32


def _taps_major_patches(x: Array, ksize, stride: int, pads) -> tuple[Array, tuple[int, ...]]:
    """The patch matrix ``(kh * kw * Cin, N * Ho * Wo)``, rows ordered ``(a, b, c)``, and
    ``(N, Ho, Wo)``."""
    # (Cin, N, H, W): each tap's slice flattens to Cin rows of the patch matrix.
    taps = _tap_slices(jnp.moveaxis(x, -1, 0), (2, 3), ksize, stride, pads)
    _, n, ho, wo = taps[0].shape
    return jnp.stack(taps).reshape(-1, n * ho * wo), (n, ho, wo)


def _taps_major_product(cols: Array, kernel: Array, precision) -> Array:
    """``cols.T @ W``: the ``(N * Ho * Wo, Cout)`` output of taps-major patches."""
    dims = (((0,), (0,)), ((), ()))
    return lax.dot_general(cols, kernel.reshape(cols.shape[0], -1), dims, precision=precision)


def _conv_taps_major(x: Array, kernel: Array, stride: int, pads, precision) -> Array:
    """Convolution through taps-major patches ``(kh * kw * Cin, N * Ho * Wo)``.

    For few input channels (the first layer on images) the pixel-major patch
    matrix ``(M, kh * kw * Cin)`` is tall and thin, and the weight gradient
    ``patches.T @ dy`` becomes a transposed product that XLA's CPU backend runs
    at a few GFLOP/s. Taps-major, that gradient is a plain ``(K, M) @ (M, Cout)``
    product. Derivatives with respect to ``x`` go through the strided slices by
    plain autodiff (the first layer's input is data, it rarely needs them).
    """
    cols, shape = _taps_major_patches(x, kernel.shape[:2], stride, pads)
    return _taps_major_product(cols, kernel, precision).reshape(*shape, kernel.shape[-1])


# Patch columns up to which a batch norm after a taps-major convolution takes its statistics from
# the patches: the K x K covariance costs K² per output row against two passes over Cout channels.
# On 2 CPU cores (benchmarks/conv_moments.py, benchmarks/results/conv_moments_cpu*.txt) the first
# block with K = 9 (3x3 on one channel, 64 filters) ran 1.0-2.0x faster with stride 2 and 1.04-1.75x
# with a max-pool; with RGB images (K = 27, 32 filters, 84x84, max-pool) 0.64-0.88x: slower.
MOMENTS_MAX_COLUMNS = 9


def moments_from_patches(
    kernel: Array, impl: str | None = None, backend: str | None = None
) -> bool:
    """Whether a batch norm after this convolution takes its statistics from the patches
    (:func:`conv2d_moments`): taps-major ``'patches'`` with ``kh * kw * Cin <= 9`` (3x3 on
    one channel: the first layer on gray images) on a CPU (``backend``; ``None``: the default
    backend), where it was measured (``benchmarks/results/throughput_levers_cpu.md``);
    accelerators and wider patches keep the statistics of the output."""
    kh, kw, cin, _ = kernel.shape
    backend = backend or jax.default_backend()
    narrow = kh * kw * cin <= MOMENTS_MAX_COLUMNS
    return backend == "cpu" and narrow and (impl or default_impl(backend)) == "patches"


def conv2d_moments(
    x: Array,
    kernel: Array,
    image_weights: Array | None = None,
    *,
    stride: int = 1,
    padding: Padding = "SAME",
    precision: lax.PrecisionLike = None,
) -> tuple[Array, Array, Array]:
    """A taps-major ``'patches'`` convolution and the per-channel mean and variance of its
    output over images and positions: the batch statistics of a batch norm after it.

    With ``cols`` the ``(K, M)`` patch matrix (``K = kh * kw * Cin``, ``M = N * Ho * Wo``)
    and ``W`` the ``(K, Cout)`` kernel, the output rows are ``cols.T @ W``, so their mean is
    ``c̄ W`` and their variance ``diag(Wᵀ Σ W)``, with ``c̄`` and ``Σ`` the mean and the
    ``K x K`` covariance of the patch rows: ``O(K² M)`` work on the small patch matrix instead
    of two passes over the ``(M, Cout)`` output (the first Conv-4 layer on a 300-image
    Omniglot query set: 9 x 58800 against 58800 x 64), and a centred variance (no
    ``E[y²] − E[y]²`` cancellation).

    Args:
        x: Images, shape ``(N, H, W, Cin)``.
        kernel: Filters ``(kh, kw, Cin, Cout)`` with ``kh * kw * Cin <= 32``
            (:func:`moments_from_patches`).
        image_weights: optional ``(N,)`` weights of the images in the moments, summing to 1
            (or all 0: mean and variance 0); ``None``: all images alike.
        stride, padding, precision: as :func:`conv2d`.

    Returns:
        ``(y, mean, var)``: ``conv2d(x, kernel, impl='patches')`` ``(N, Ho, Wo, Cout)``, and
        the ``(Cout,)`` mean and variance of ``y`` over its first three axes, computed in at
        least float32 (from the patches: for 16-bit inputs, the moments of the exact product,
        not of ``y`` rounded to 16 bits).
    """
    kh, kw, cin, cout = kernel.shape
    if kh * kw * cin > TAPS_MAJOR_MAX_COLUMNS or x.shape[-1] != cin:
        raise ValueError(
            f"conv2d_moments needs a kernel with kh * kw * Cin <= {TAPS_MAJOR_MAX_COLUMNS} "
            f"and input channels Cin; got kernel {kernel.shape} on input {x.shape}"
        )
    dt = jnp.result_type(x, kernel)
    x, kernel = jnp.asarray(x, dt), jnp.asarray(kernel, dt)
    pads = _pads(x.shape[1:3], (kh, kw), stride, padding)
    cols, (n, ho, wo) = _taps_major_patches(x, (kh, kw), int(stride), pads)
    y = _taps_major_product(cols, kernel, precision).reshape(n, ho, wo, cout)
    st = jnp.promote_types(dt, jnp.float32)  # statistics never in 16 bits
    c, w = cols.astype(st), kernel.reshape(-1, cout).astype(st)
    if image_weights is None:
        rows = jnp.full((c.shape[1],), 1.0 / c.shape[1], st)
    else:
        rows = jnp.repeat(jnp.asarray(image_weights, st) / (ho * wo), ho * wo)
    cbar = c @ rows
    centred = c - cbar[:, None]
    cov = (centred * rows) @ centred.T
    mean = cbar @ w
    var = jnp.maximum(jnp.sum(w * (cov @ w), axis=0), 0.0)
    return y, mean, var


def conv2d(
    x: Array,
    kernel: Array,
    *,
    stride: int = 1,
    padding: Padding = "SAME",
    impl: str | None = None,
    precision: lax.PrecisionLike = None,
) -> Array:
    """2-D convolution, NHWC input and HWIO kernel, no bias.

    Equal to ``lax.conv_general_dilated(x, kernel, (stride, stride), padding,
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'))`` up to float rounding, with
    derivatives of any order.

    Args:
        x: Images, shape ``(N, H, W, Cin)``.
        kernel: Filters, shape ``(kh, kw, Cin, Cout)``.
        stride: Stride in both spatial dimensions.
        padding: ``'SAME'``, ``'VALID'`` or two ``(low, high)`` pairs.
        impl: ``'xla'`` (``lax.conv_general_dilated``), ``'patches'`` (im2col
            with a fused custom-VJP adjoint, then a matrix product; reverse
            mode only, see the module docstring) or ``'patches_autodiff'``
            (same, but plain autodiff through the slices: forward mode too).
            ``None`` (the default) picks :func:`default_impl` of the default
            backend, i.e. ``'patches'`` on CPU and ``'xla'`` elsewhere.
        precision: Passed to the convolution or matrix product.

    Returns:
        Feature maps, shape ``(N, Ho, Wo, Cout)``.

    Example:
        >>> y = conv2d(jnp.ones((1, 5, 5, 3)), jnp.ones((3, 3, 3, 8)), stride=2)
    """
    impl = impl or default_impl()
    kh, kw, cin, cout = kernel.shape
    if x.shape[-1] != cin:
        raise ValueError(f"input has {x.shape[-1]} channels, kernel expects {cin}")
    # Mixed dtypes (float64 params on float32 images) promote in every implementation alike.
    dt = jnp.result_type(x, kernel)
    x, kernel = jnp.asarray(x, dt), jnp.asarray(kernel, dt)
    if impl == "xla":
        return lax.conv_general_dilated(
            x,
            kernel,
            (stride, stride),
            padding if isinstance(padding, str) else tuple(padding),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=precision,
        )
    pads = _pads(x.shape[1:3], (kh, kw), stride, padding)
    if impl == "patches" and kh * kw * cin <= TAPS_MAJOR_MAX_COLUMNS:
        return _conv_taps_major(x, kernel, int(stride), pads, precision)
    if impl == "patches":
        cols = _im2col(x, (kh, kw), int(stride), pads)
    elif impl == "patches_autodiff":
        cols = _im2col_impl(x, (kh, kw), int(stride), pads)
    else:
        raise ValueError(f"unknown conv impl {impl!r}; choose from {IMPLS}")
    return jnp.dot(cols, kernel.reshape(kh * kw * cin, cout), precision=precision)
