"""Tests for mamlx.models.conv (conv2d implementations) and mamlx.models.conv4."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax
from jax.test_util import check_grads

from mamlx.models import conv as conv_lib
from mamlx.models import functional
from mamlx.models.conv import conv2d, default_impl, im2col
from mamlx.models.conv4 import Conv4, batch_norm, max_pool_2x2

IMPLS = ["patches", "patches_autodiff"]
CASES = [  # (H, W, Cin, Cout, k, stride, padding)
    (28, 28, 1, 8, 3, 2, "SAME"),
    (7, 7, 4, 5, 3, 2, "SAME"),
    (9, 6, 3, 4, 3, 1, "SAME"),
    (9, 7, 3, 2, 3, 2, "VALID"),
    (10, 11, 2, 3, 3, 3, "SAME"),
    (8, 8, 2, 3, 5, 1, "VALID"),
    (5, 5, 3, 2, 3, 2, ((2, 0), (1, 3))),
    (6, 5, 2, 2, 2, 3, "SAME"),
]


def _ref(x, w, stride, padding):
    return lax.conv_general_dilated(
        x,
        w,
        (stride, stride),
        padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=lax.Precision.HIGHEST,
    )


def _inputs(case, dtype=jnp.float32, n=2):
    h, w, cin, cout, k, _, _ = case
    kx, kw = jax.random.split(jax.random.key(CASES.index(case)))
    return jax.random.normal(kx, (n, h, w, cin), dtype), jax.random.normal(
        kw, (k, k, cin, cout), dtype
    )


@pytest.mark.parametrize(
    "case,impl", [(c, "patches") for c in CASES] + [(CASES[0], "patches_autodiff")], ids=str
)
def test_matches_xla_forward_grad_hessian(case, impl):
    *_, stride, padding = case
    x, w = _inputs(case)
    ours = lambda x, w: conv2d(x, w, stride=stride, padding=padding, impl=impl, precision="highest")
    ref = lambda x, w: _ref(x, w, stride, padding)
    np.testing.assert_allclose(jax.jit(ours)(x, w), ref(x, w), rtol=1e-5, atol=1e-5)

    def loss(f):
        return lambda x, w: jnp.sum(jnp.sin(f(x, w)))

    g_ours = jax.jit(jax.grad(loss(ours), (0, 1)))(x, w)
    g_ref = jax.jit(jax.grad(loss(ref), (0, 1)))(x, w)
    for a, b in zip(g_ours, g_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)

    if CASES.index(case) >= 4 and impl == "patches":
        return  # second order on the first four cases (and in the float64 check_grads test)

    def grad_norm(f):  # grad of grad, through both inputs
        def h(x, w):
            gx, gw = jax.grad(loss(f), (0, 1))(x, w)
            return jnp.sum(gx**2) + jnp.sum(jnp.cos(gw))

        return h

    with jax.enable_x64(True):  # float64: the two agree to rounding, not to float32's 1e-3
        x, w = _inputs(case, jnp.float64)
        h_ours = jax.jit(jax.grad(grad_norm(ours), (0, 1)))(x, w)
        h_ref = jax.jit(jax.grad(grad_norm(ref), (0, 1)))(x, w)
        for a, b in zip(h_ours, h_ref, strict=True):
            assert a.dtype == jnp.float64
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cin", [2, 4], ids=["taps-major", "pixel-major"])
@pytest.mark.parametrize("stride,padding", [(2, "SAME"), (1, "VALID")])
def test_check_grads_order2_float64(stride, padding, cin):
    assert (9 * cin <= conv_lib.TAPS_MAJOR_MAX_COLUMNS) == (cin == 2)
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (1, 5, 5, cin), jnp.float64)
        w = jax.random.normal(jax.random.key(1), (3, 3, cin, 2), jnp.float64)
        f = lambda x, w: conv2d(x, w, stride=stride, padding=padding, impl="patches")
        check_grads(f, (x, w), order=2, modes=["rev"])
        # im2col is linear and its VJP is col2im: check the adjoint identity too.
        cols = im2col(x, (3, 3), stride=stride, padding=padding)
        c = jax.random.normal(jax.random.key(2), cols.shape, jnp.float64)
        _, vjp = jax.vjp(lambda x: im2col(x, (3, 3), stride=stride, padding=padding), x)
        np.testing.assert_allclose(jnp.vdot(cols, c), jnp.vdot(x, vjp(c)[0]), rtol=1e-12)


@pytest.mark.parametrize("cin", [2, 4], ids=["taps-major", "pixel-major"])
def test_forward_mode_works_with_patches_autodiff_and_is_refused_by_patches(cin):
    # The module docstring's promise: forward mode (jvp, jacfwd, hessian) through
    # 'patches_autodiff' and 'xla'; 'patches' (custom VJP) is reverse mode only.
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (2, 6, 6, cin), jnp.float64)
        w = jax.random.normal(jax.random.key(1), (3, 3, cin, 3), jnp.float64)
        conv = lambda impl: lambda x, w: conv2d(x, w, stride=2, impl=impl)
        check_grads(conv("patches_autodiff"), (x, w), order=2, modes=["fwd", "rev"])
        loss = lambda f: lambda xw: jnp.sum(jnp.tanh(f(*xw)) ** 2)
        keys = jax.random.split(jax.random.key(2))
        v = tuple(
            jax.random.normal(k, a.shape, jnp.float64) for k, a in zip(keys, (x, w), strict=True)
        )
        hvp = lambda f: jax.jvp(jax.grad(loss(f)), ((x, w),), (v,))[1]  # forward-over-reverse
        want = hvp(conv("xla"))
        close = lambda a, b: jax.tree.map(
            # atol: float64 round-off of entries near zero (measured 5e-15 on an entry of
            # 1.5e-5 beside entries of order 10, with XLA's older fusion emitters)
            lambda p, q: np.testing.assert_allclose(p, q, rtol=1e-10, atol=1e-12),
            a,
            b,
        )
        close(hvp(conv("patches_autodiff")), want)
        vdot = lambda a, b: sum(jnp.vdot(p, q) for p, q in zip(a, b, strict=True))
        close(jax.grad(lambda xw: vdot(jax.grad(loss(conv("patches")))(xw), v))((x, w)), want)
        if cin * 9 > conv_lib.TAPS_MAJOR_MAX_COLUMNS:  # the custom-VJP (pixel-major) path
            with pytest.raises(TypeError, match="forward-mode"):
                hvp(conv("patches"))
        else:  # few channels: plain slices, forward mode works
            close(hvp(conv("patches")), want)


def test_taps_major_and_pixel_major_patches_agree_to_second_order():
    # Both layouts on one many-channel case (conv2d picks taps-major only for few channels).
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(3), (2, 9, 8, 6), jnp.float64)
        w = jax.random.normal(jax.random.key(4), (3, 3, 6, 5), jnp.float64)
        _check_layouts_agree(x, w)


def _check_layouts_agree(x, w):
    pads = conv_lib._pads((9, 8), (3, 3), 2, "SAME")

    def taps(x, w):
        return conv_lib._conv_taps_major(x, w, 2, pads, lax.Precision.HIGHEST)

    def pixels(x, w):
        cols = im2col(x, (3, 3), stride=2, padding="SAME")
        return jnp.dot(cols, w.reshape(-1, w.shape[-1]), precision=lax.Precision.HIGHEST)

    def grad_norm(f):
        def h(x, w):
            gx, gw = jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w))), (0, 1))(x, w)
            return jnp.sum(gx**2) + jnp.sum(jnp.cos(gw))

        return h

    np.testing.assert_allclose(taps(x, w), pixels(x, w), rtol=1e-12)
    for a, b in zip(
        jax.grad(grad_norm(taps), (0, 1))(x, w),
        jax.grad(grad_norm(pixels), (0, 1))(x, w),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cin", [3, 8])  # 27 columns: taps-major path; 72: the custom VJP's
@pytest.mark.parametrize("impl", IMPLS)
def test_vmap_per_task_kernels(impl, cin):
    xs = jax.random.normal(jax.random.key(0), (3, 2, 7, 7, cin))
    ws = jax.random.normal(jax.random.key(1), (3, 3, 3, cin, 4)) / cin
    ours = jax.vmap(lambda x, w: conv2d(x, w, stride=2, impl=impl))(xs, ws)
    ref = jnp.stack([_ref(x, w, 2, "SAME") for x, w in zip(xs, ws, strict=True)])
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)

    # per-task second-order: vmap of grad-of-grad
    def task(x, w):
        inner = jax.grad(lambda w: jnp.sum(jnp.tanh(conv2d(x, w, stride=2, impl=impl))))
        return jnp.sum(inner(w) ** 2)

    def task_ref(x, w):
        inner = jax.grad(lambda w: jnp.sum(jnp.tanh(_ref(x, w, 2, "SAME"))))
        return jnp.sum(inner(w) ** 2)

    with jax.enable_x64(True):  # float64: the two agree to rounding, not to float32's 1e-3
        xs, ws = (a.astype(jnp.float64) for a in (xs, ws))
        g = jax.jit(jax.vmap(jax.grad(task, 1)))(xs, ws)
        g_ref = jax.jit(jax.vmap(jax.grad(task_ref, 1)))(xs, ws)
        assert g.dtype == jnp.float64
        np.testing.assert_allclose(g, g_ref, rtol=1e-10, atol=1e-10)


def test_default_impl_depends_on_the_backend_only(monkeypatch):
    assert default_impl("cpu") == "patches"
    assert default_impl("gpu") == "xla"
    assert default_impl("gpu", batched_kernels=True) == "patches"
    assert default_impl("tpu", batched_kernels=True) == "xla"  # not measured there
    assert default_impl() == default_impl(jax.default_backend())
    # No process-wide switch: the environment does not change it (the CLI reads the variable).
    monkeypatch.setenv("MAMLX_CONV_IMPL", "xla")
    assert default_impl("cpu") == "patches" and not hasattr(conv_lib, "set_default_impl")
    with pytest.raises(ValueError):
        conv2d(jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 1)), impl="nope")
    with pytest.raises(ValueError):
        conv2d(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 1, 1)))


def test_mixed_dtypes_promote_alike_in_every_impl():
    # float64 params (tree_cast) on float32 images: once only 'patches' accepted it, so code
    # that ran on CPU failed on a GPU, whose default for shared kernels is 'xla'.
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3), jnp.float32)
        k = jax.random.normal(jax.random.key(1), (3, 3, 3, 5), jnp.float64)
        outs = {i: conv2d(x, k, stride=2, impl=i) for i in conv_lib.IMPLS}
        for i, y in outs.items():
            assert y.dtype == jnp.float64, i
            np.testing.assert_allclose(y, outs["xla"], rtol=1e-10, atol=1e-12, err_msg=i)


def test_max_pool_2x2():
    x = jax.random.normal(jax.random.key(0), (2, 5, 6, 3))
    ref = lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    np.testing.assert_allclose(max_pool_2x2(x), ref)


def test_max_pool_2x2_gradient_selects_one_element_per_window():
    # Distinct values: the gradient of every order equals reduce_window's (finite differences).
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (2, 5, 6, 3), jnp.float64)
        check_grads(lambda x: jnp.sum(max_pool_2x2(x) ** 3), (x,), 2, eps=1e-4)
    # Ties (relu zeros, saturated pixels): the window's whole cotangent goes to one element,
    # never divided by a count of elements found equal to the maximum again (0/0 = NaN when
    # a compiled program recomputes the window in another rounding).
    tied = jnp.zeros((1, 2, 2, 1)).at[0, 1, 1, 0].set(-1.0)
    g = jax.grad(lambda x: jnp.sum(max_pool_2x2(x) * 3.0))(tied)
    np.testing.assert_array_equal(np.asarray(g).ravel(), [3.0, 0.0, 0.0, 0.0])
    rows = jax.random.normal(jax.random.key(1), (4, 4, 4, 2))
    g = jax.jit(jax.grad(lambda x: jnp.sum(max_pool_2x2(x))))(rows)
    windows = np.asarray(g).reshape(4, 2, 2, 2, 2, 2).transpose(0, 1, 3, 5, 2, 4)
    np.testing.assert_array_equal(windows.reshape(-1, 4).sum(-1), 1.0)
    np.testing.assert_array_equal((windows.reshape(-1, 4) != 0).sum(-1), 1)


@pytest.mark.parametrize(
    "in_shape,pool,filters,features",
    [
        ((28, 28, 1), "stride", 64, 2 * 2 * 64),
        ((28, 28, 1), "max", 64, 1 * 1 * 64),
        ((84, 84, 3), "max", 32, 5 * 5 * 32),
        ((84, 84, 3), "stride", 32, 6 * 6 * 32),
    ],
)
def test_conv4_shapes(in_shape, pool, filters, features):
    model = Conv4(5, in_shape=in_shape, filters=filters, pool=pool, rngs=nnx.Rngs(0))
    x = jnp.ones((2, *in_shape))
    assert nnx.jit(lambda m, x: m.features(x))(model, x).shape == (2, features)
    apply_fn, params = functional(model)
    assert jax.jit(apply_fn)(params, x).shape == (2, 5)
    assert params["head"]["kernel"].shape == (features, 5)


def test_conv4_mean_readout_is_mamls_omniglot_head():
    # MAML's reference code on Omniglot: hidden4 = reduce_mean(hidden4, [1, 2]) before the
    # (64, ways) head; 'flatten' feeds the whole 2x2x64 map instead.
    mean = Conv4(5, filters=8, readout="mean", rngs=nnx.Rngs(0))
    flat = Conv4(5, filters=8, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (3, 28, 28, 1))
    maps = flat.features(x).reshape(3, 2, 2, 8)
    np.testing.assert_allclose(mean.features(x), maps.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    assert mean.head.kernel.shape == (8, 5) and flat.head.kernel.shape == (2 * 2 * 8, 5)
    with pytest.raises(ValueError, match="readout must be one of"):
        Conv4(5, readout="max", rngs=nnx.Rngs(0))


def test_conv4_impls_agree_second_order():
    """MAML-style grad through one inner step: patches == xla (per task, vmapped)."""
    x = jax.random.normal(jax.random.key(0), (2, 6, 12, 12, 1))
    y = jnp.tile(jnp.arange(3).repeat(2), (2, 1))

    def meta_grad(impl):
        model = Conv4(3, in_shape=(12, 12, 1), filters=4, conv_impl=impl, rngs=nnx.Rngs(0))
        apply_fn, params = functional(model)

        def loss(p, x, y):
            logits = apply_fn(p, x)
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

        def task(p, x, y):
            g = jax.grad(loss)(p, x[:3], y[:3])
            p = jax.tree.map(lambda a, b: a - 0.4 * b, p, g)
            return loss(p, x[3:], y[3:])

        return jax.jit(jax.grad(lambda p: jax.vmap(task, (None, 0, 0))(p, x, y).mean()))(params)

    for a, b in zip(
        jax.tree.leaves(meta_grad("patches")), jax.tree.leaves(meta_grad("xla")), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4)


def test_conv4_running_stats_mode():
    kw = dict(in_shape=(8, 8, 1), filters=4)
    model = Conv4(5, transductive=False, rngs=nnx.Rngs(0), **kw)
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    before = model.blocks[0].norm.mean[...]
    nnx.jit(lambda m, x: m(x))(model, x)  # train mode: batch stats, running averages updated
    assert not np.allclose(before, model.blocks[0].norm.mean[...])
    model.eval()
    out = nnx.jit(lambda m, x: m(x))(model, x[:1])  # eval: running averages
    assert out.shape == (1, 5)
    t = Conv4(5, rngs=nnx.Rngs(0), **kw)
    t.eval()  # transductive: still batch statistics
    np.testing.assert_allclose(
        nnx.jit(lambda m, x: m(x))(t, x),
        nnx.jit(lambda m, x: m(x))(Conv4(5, rngs=nnx.Rngs(0), **kw), x),
        rtol=1e-5,
    )
    with pytest.raises(ValueError):
        Conv4(5, pool="avg", rngs=nnx.Rngs(0))


@pytest.mark.parametrize("use_running_average", [False, True])
def test_batch_norm_matches_flax_values_running_stats_and_second_derivatives(use_running_average):
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (6, 5, 5, 4), jnp.float64) * 3.0 + 1.5

        def make():
            bn = nnx.BatchNorm(4, momentum=0.8, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
            bn.scale[...] = jnp.arange(1.0, 5.0, dtype=jnp.float64)
            bn.bias[...] = jnp.linspace(-1.0, 1.0, 4, dtype=jnp.float64)
            # Flax keeps the batch statistics in float32: replace them (a float64 write
            # into them is a deprecated narrowing scatter)
            bn.mean.set_value(jnp.full((4,), 0.3, jnp.float64))
            bn.var.set_value(jnp.full((4,), 2.0, jnp.float64))
            return bn

        ours, ref = make(), make()
        y = batch_norm(ours, x, use_running_average)
        np.testing.assert_allclose(y, ref(x, use_running_average=use_running_average), rtol=1e-10)
        np.testing.assert_allclose(ours.mean[...], ref.mean[...], rtol=1e-12)
        np.testing.assert_allclose(ours.var[...], ref.var[...], rtol=1e-12)

        graphdef, state = nnx.split(make())

        def loss(apply, v):
            bn = nnx.merge(graphdef, state, copy=True)
            return jnp.sum(jnp.tanh(apply(bn, v.reshape(x.shape))) ** 2)

        mine = lambda v: loss(lambda bn, u: batch_norm(bn, u, use_running_average), v)
        flax = lambda v: loss(lambda bn, u: bn(u, use_running_average=use_running_average), v)
        flat = x.reshape(-1)[:48]  # a slice keeps the Hessians small
        x_rest = x.reshape(-1)[48:]
        h = jax.hessian(lambda v: mine(jnp.concatenate([v, x_rest])))(flat)
        h_ref = jax.hessian(lambda v: flax(jnp.concatenate([v, x_rest])))(flat)
        np.testing.assert_allclose(h, h_ref, rtol=1e-8, atol=1e-10)
        check_grads(mine, (x.reshape(-1),), order=2, modes=["rev"], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_batch_norm_statistics_of_16_bit_inputs_are_taken_in_float32(dtype):
    # A large channel mean next to a small spread: E[x^2] - E[x]^2 in 16 bits cancels to
    # garbage in 16 bits; Flax, and now ours, take the statistics in float32.
    x = (30.0 + jax.random.normal(jax.random.key(0), (64, 4, 4, 4))).astype(dtype)
    bn = nnx.BatchNorm(4, rngs=nnx.Rngs(0))
    ref = nnx.BatchNorm(4, rngs=nnx.Rngs(0))
    y = batch_norm(bn, x, use_running_average=False)
    want = ref(x, use_running_average=False)
    assert y.dtype == want.dtype
    std = np.asarray(y, np.float32).reshape(-1, 4).std(0)
    np.testing.assert_allclose(std, 1.0, atol=0.05)
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(want, np.float32), atol=0.05)
    np.testing.assert_allclose(bn.var[...], ref.var[...], rtol=0.05)


def test_batch_norm_mask_takes_statistics_from_the_masked_examples_only():
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(1), (6, 3, 3, 4), jnp.float64) * 2.0 - 0.5
        mask = jnp.array([True, False, True, True, False, True])

        def make():  # float64 batch statistics (Flax keeps them in float32)
            bn = nnx.BatchNorm(4, momentum=0.8, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
            bn.mean.set_value(jnp.zeros(4, jnp.float64))
            bn.var.set_value(jnp.ones(4, jnp.float64))
            return bn

        ours, ref = make(), make()
        y = batch_norm(ours, x, False, mask)
        want = ref(
            x, use_running_average=False, mask=jnp.broadcast_to(mask[:, None, None, None], x.shape)
        )
        np.testing.assert_allclose(y, want, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(ours.mean[...], ref.mean[...], rtol=1e-12)
        np.testing.assert_allclose(ours.var[...], ref.var[...], rtol=1e-12)
        # Masked-out examples do not move the statistics at all.
        moved = x.at[~mask].set(100.0)
        np.testing.assert_allclose(
            batch_norm(make(), moved, False, mask)[mask], y[mask], rtol=1e-12
        )
        # Flax's default float32 statistics stay float32 under float64 inputs, and the
        # update is cast explicitly (no narrowing scatter, which JAX deprecates)
        bn = nnx.BatchNorm(4, momentum=0.8, rngs=nnx.Rngs(0))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            batch_norm(bn, x, False, mask)
        assert bn.mean[...].dtype == bn.var[...].dtype == jnp.float32
        np.testing.assert_allclose(bn.mean[...], ours.mean[...], rtol=1e-6)


def test_fewshot_learners_pick_the_convolution_by_algorithm(monkeypatch):
    """On GPU, learners that adapt the convolutions per task use patches (grouped
    convolutions are slow there too); ANIL, whose body is shared, keeps cuDNN's."""
    from mamlx import Episode, registry
    from mamlx.config import FewShotConfig
    from mamlx.datasets import conv_default as by_kernels
    from mamlx.experiments import build_learner as fewshot_learner

    def conv_default(algo, task_map="auto"):
        return by_kernels(registry.get_learner(algo).per_task_kernels, task_map)

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # only traced below
    assert conv_default("maml") == conv_default("reptile") == "patches"
    assert conv_default("anil") == "xla"
    assert conv_default("maml", task_map="map") == "xla"  # one task at a time: shared kernels
    assert conv_default("protonet") == "xla"  # not a per-task-kernel learner
    x = jnp.zeros((2, 8, 8, 1))  # one task of 2 examples
    y = jnp.zeros((2,), jnp.int32)
    for algo, xla_conv in (("maml", False), ("meta-lstm", False), ("anil", True)):
        cfg = FewShotConfig(algo=algo, ways=2, filters=4, image_size=8, inner_lr=0.1)
        learner = fewshot_learner(cfg)
        params = learner.init(jax.random.PRNGKey(0))
        jaxpr = str(jax.make_jaxpr(learner.outer_loss)(params, Episode(x, y, x, y)))
        assert ("conv_general_dilated" in jaxpr) == xla_conv, algo
        cfg = FewShotConfig(
            algo=algo, ways=2, filters=4, image_size=8, inner_lr=0.1, conv_impl="xla"
        )
        learner = fewshot_learner(cfg)
        jaxpr = str(
            jax.make_jaxpr(learner.outer_loss)(
                learner.init(jax.random.PRNGKey(0)), Episode(x, y, x, y)
            )
        )
        assert "conv_general_dilated" in jaxpr, algo  # an explicit choice is kept


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[6]], ids=str)
def test_conv2d_moments_are_the_outputs_weighted_mean_and_variance(case):
    """Moments from the patch matrix (mean c̄W, variance diag(WᵀΣW)) against the output's own
    weighted mean and variance, float64; weights with a zero, and all zero (mean and var 0)."""
    _, _, _, cout, _, stride, padding = case
    with jax.enable_x64(True):
        x, w = _inputs(case, jnp.float64, n=4)
        x = x * 2.0 + 3.0  # a mean far from 0: a variance by E[y²] − E[y]² would cancel
        for weights in (None, jnp.array([0.5, 0.0, 0.125, 0.375])):
            y, mean, var = conv_lib.conv2d_moments(x, w, weights, stride=stride, padding=padding)
            np.testing.assert_allclose(y, _ref(x, w, stride, padding), rtol=1e-12, atol=1e-12)
            p = jnp.full(4, 0.25) if weights is None else weights
            rows = jnp.broadcast_to(p[:, None, None, None] / (y.shape[1] * y.shape[2]), y.shape)
            want_mean = jnp.sum(rows * y, axis=(0, 1, 2))
            want_var = jnp.sum(rows * (y - want_mean) ** 2, axis=(0, 1, 2))
            assert mean.shape == var.shape == (cout,)
            np.testing.assert_allclose(mean, want_mean, rtol=1e-12)
            np.testing.assert_allclose(var, want_var, rtol=1e-12)
        _, mean, var = conv_lib.conv2d_moments(x, w, jnp.zeros(4), stride=stride, padding=padding)
        np.testing.assert_array_equal(mean, 0.0)
        np.testing.assert_array_equal(var, 0.0)


def test_conv2d_moments_derivatives_16_bit_inputs_and_where_they_are_used():
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (1, 7, 6, 3), jnp.float64)
        w = jax.random.normal(jax.random.key(1), (3, 3, 3, 2), jnp.float64)

        def f(x, w):  # every output, to second order, in both modes (plain slices and products)
            y, m, v = conv_lib.conv2d_moments(x, w, stride=2)
            return jnp.sum(jnp.sin(y)) + jnp.sum(m * jnp.cos(m)) + jnp.sum(jnp.sqrt(v + 1.0))

        check_grads(f, (x, w), order=2, modes=["fwd", "rev"], atol=1e-6, rtol=1e-6, eps=1e-6)
    # 16-bit inputs: statistics in float32 (a large mean beside a small spread would cancel)
    x = (30.0 + jax.random.normal(jax.random.key(2), (16, 8, 8, 1))).astype(jnp.bfloat16)
    w = jnp.full((3, 3, 1, 4), 1.0 / 9, jnp.bfloat16)
    y, mean, var = conv_lib.conv2d_moments(x, w, padding="VALID")
    assert y.dtype == jnp.bfloat16 and mean.dtype == var.dtype == jnp.float32
    y32 = conv2d(x.astype(jnp.float32), w.astype(jnp.float32), padding="VALID", impl="xla")
    np.testing.assert_allclose(mean, y32.mean((0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(var, y32.var((0, 1, 2)), rtol=1e-3)
    with pytest.raises(ValueError, match="kh \\* kw \\* Cin <= 32"):
        conv_lib.conv2d_moments(jnp.ones((1, 5, 5, 4)), jnp.ones((3, 3, 4, 2)))
    gray, rgb = jnp.ones((3, 3, 1, 64)), jnp.ones((3, 3, 3, 32))
    assert conv_lib.moments_from_patches(gray, "patches", "cpu")
    assert conv_lib.moments_from_patches(gray, None, "cpu")
    assert not conv_lib.moments_from_patches(gray, "xla", "cpu")
    assert not conv_lib.moments_from_patches(gray, "patches", "gpu")  # measured on CPUs only
    assert not conv_lib.moments_from_patches(rgb, "patches", "cpu")  # RGB: not measured


def test_batch_norm_uses_given_moments_and_updates_the_running_averages_from_them():
    x = jax.random.normal(jax.random.key(0), (4, 3, 3, 2))
    given = (jnp.array([0.5, -1.0]), jnp.array([4.0, 0.25]))
    bn = nnx.BatchNorm(2, momentum=0.5, rngs=nnx.Rngs(0))
    y = batch_norm(bn, x, False, moments=given)
    np.testing.assert_allclose(y, (x - given[0]) / jnp.sqrt(given[1] + bn.epsilon), rtol=1e-6)
    np.testing.assert_allclose(bn.mean[...], 0.5 * given[0], rtol=1e-6)
    np.testing.assert_allclose(bn.var[...], 0.5 + 0.5 * given[1], rtol=1e-6)
    running = nnx.BatchNorm(2, rngs=nnx.Rngs(0))  # running averages: the moments are ignored
    np.testing.assert_allclose(
        batch_norm(running, x, True, moments=given), x / jnp.sqrt(1 + running.epsilon), rtol=1e-6
    )


@pytest.mark.parametrize("pool, transductive", [("stride", True), ("max", False)])
def test_first_block_with_moments_from_patches_is_conv_then_flax_batch_norm(
    pool, transductive, monkeypatch
):
    """The first block (taps-major patches: statistics from the patches) against its parts
    computed the plain way: the XLA convolution, then Flax's own BatchNorm, ReLU, pool; output,
    running averages and gradients (to the kernel, bias, scale and images) in float64, with and
    without a mask. Later blocks and eval mode keep the statistics of the output."""
    from mamlx.models import conv4
    from mamlx.models.conv4 import ConvBlock

    calls = []  # the block takes the patches path (here, on a CPU)
    real = conv4.conv2d_moments
    monkeypatch.setattr(
        conv4, "conv2d_moments", lambda *a, **k: (calls.append(1), real(*a, **k))[1]
    )
    with jax.enable_x64(True):
        x = jax.random.uniform(jax.random.key(3), (5, 10, 10, 1), jnp.float64) + 0.5
        mask = jnp.array([True, False, True, True, False])

        def make():
            b = ConvBlock(1, 6, pool=pool, transductive=transductive, rngs=nnx.Rngs(0))
            b.kernel.set_value(jnp.asarray(b.kernel[...], jnp.float64))
            b.bias.set_value(jnp.linspace(-0.5, 0.5, 6, dtype=jnp.float64))
            b.norm.scale.set_value(jnp.linspace(0.5, 2.0, 6, dtype=jnp.float64))
            b.norm.bias.set_value(jnp.linspace(-1.0, 1.0, 6, dtype=jnp.float64))
            b.norm.mean.set_value(jnp.full((6,), 0.3, jnp.float64))
            b.norm.var.set_value(jnp.full((6,), 2.0, jnp.float64))
            return b

        def plain(b, x, m):
            y = _ref(x, b.kernel[...], b.stride, "SAME") + b.bias[...]
            rows = None if m is None else jnp.broadcast_to(m[:, None, None, None], y.shape)
            y = jax.nn.relu(b.norm(y, use_running_average=False, mask=rows))
            return max_pool_2x2(y) if pool == "max" else y

        for m in (None, mask):
            ours, ref = make(), make()
            np.testing.assert_allclose(ours(x, m), plain(ref, x, m), rtol=1e-10, atol=1e-12)
            for stat in ("mean", "var"):
                got, want = getattr(ours.norm, stat)[...], getattr(ref.norm, stat)[...]
                np.testing.assert_allclose(got, want, rtol=1e-12)
            graphdef, state = nnx.split(make())
            ct = jax.random.normal(jax.random.key(4), ours(x, m).shape, jnp.float64)

            def loss(call, s, x):
                return jnp.vdot(jnp.tanh(call(nnx.merge(graphdef, s, copy=True), x, m)), ct)

            g = jax.grad(lambda s, x: loss(lambda b, x, m: b(x, m), s, x), (0, 1))(state, x)
            want = jax.grad(lambda s, x: loss(plain, s, x), (0, 1))(state, x)
            for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(want), strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)
        assert len(calls) == 6  # per mask: two forward passes and one differentiated
        # The patches path runs only where it applies: a pixel-major (second) block and
        # running averages take the output's statistics.
        second = ConvBlock(64, 4, rngs=nnx.Rngs(0))
        assert not conv_lib.moments_from_patches(second.kernel[...], second.conv_impl)
        if not transductive:
            ours, ref = make(), make()
            ours.norm.use_running_average = ref.norm.use_running_average = True
            want = jax.nn.relu(ref.norm(_ref(x, ref.kernel[...], 1, "SAME") + ref.bias[...]))
            np.testing.assert_allclose(ours(x), max_pool_2x2(want), rtol=1e-10, atol=1e-12)
            assert len(calls) == 6  # running averages: no call
