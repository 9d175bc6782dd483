"""Tests for the coordinatewise LSTM optimizer (Andrychowicz et al., 2016)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mamlx.optimizers import (
    init_lstm_optimizer,
    lstm_optimizer,
    lstm_optimizer_params_sgd,
    preprocess_gradient,
)


def _params(key=0):
    k = jax.random.split(jax.random.key(key), 4)
    return {
        "dense": [{"w": jax.random.normal(k[0], (3, 4)), "b": jax.random.normal(k[1], (4,))}],
        "conv": (jax.random.normal(k[2], (2, 2, 1, 3)),),
        "scalar": jax.random.normal(k[3], ()),
    }


def _loss(p):
    leaves = jax.tree.leaves(p)
    return sum(jnp.sum(jnp.sin(x) * x**2) for x in leaves)


def test_preprocess_matches_paper_formula():
    p = 10.0
    x = jnp.array([2.0, -0.5, 1e-6, -1e-7, 0.0])
    out = np.asarray(preprocess_gradient(x, p))
    for xi, (a, b) in zip(np.asarray(x), out, strict=True):
        if abs(xi) >= math.exp(-p):
            np.testing.assert_allclose([a, b], [math.log(abs(xi)) / p, np.sign(xi)], rtol=1e-6)
        else:
            np.testing.assert_allclose([a, b], [-1.0, math.exp(p) * xi], rtol=1e-5)
    g = jax.grad(lambda x: jnp.sum(preprocess_gradient(x)))(x)
    assert np.all(np.isfinite(np.asarray(g)))


def _run(opt, params, steps=8):
    @jax.jit
    def step(params, state):
        upd, state = opt.update(jax.grad(_loss)(params), state, params)
        return optax.apply_updates(params, upd), state

    state = opt.init(params)
    traj = []
    for _ in range(steps):
        params, state = step(params, state)
        traj.append(params)
    return traj


@pytest.mark.parametrize("lr", [0.01, 0.1])
def test_sgd_params_reproduce_sgd_step_for_step(lr):
    params = _params()
    learned = _run(lstm_optimizer(lstm_optimizer_params_sgd(lr)), params)
    sgd = _run(optax.sgd(lr), params)
    for a, b in zip(learned, sgd, strict=True):
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, b)
    # the trajectory actually moves (a no-op optimizer must not pass)
    moved = jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))), learned[-1], params)
    assert max(jax.tree.leaves(moved)) > 1e-3
    assert lstm_optimizer_params_sgd(1)["skip"].dtype == jnp.float32  # an int rate: still float
    with jax.enable_x64(True):  # float64 parameters: the same update to the last bit
        p64 = {"w": jnp.array([1.0, -2.0, 3.0])}
        g64 = {"w": jnp.array([0.5, 0.25, -4.0])}
        opt = lstm_optimizer(lstm_optimizer_params_sgd(lr))
        got, _ = opt.update(g64, opt.init(p64), p64)
        want, _ = optax.sgd(lr).update(g64, optax.sgd(lr).init(p64), p64)
        assert got["w"].dtype == jnp.float64
        np.testing.assert_array_equal(got["w"], want["w"])


def _np_reference(mp, grads_seq, output_scale=0.1, p=10.0):
    """Plain numpy implementation of the paper's two-layer coordinatewise LSTM."""
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))
    layers = [{k: np.asarray(v, np.float64) for k, v in lay.items()} for lay in mp["lstm"]]
    hidden = layers[0]["b"].shape[0] // 4
    n = grads_seq[0].size
    h = [np.zeros((n, hidden)) for _ in layers]
    c = [np.zeros((n, hidden)) for _ in layers]
    outs = []
    for g in grads_seq:
        g = np.asarray(g, np.float64).ravel()
        big = np.abs(g) >= np.exp(-p)
        x = np.stack(
            [
                np.where(big, np.log(np.where(big, np.abs(g), 1.0)) / p, -1.0),
                np.where(big, np.sign(g), np.exp(p) * g),
            ],
            -1,
        )
        for li, lay in enumerate(layers):
            z = np.concatenate([x, h[li]], -1) @ lay["w"] + lay["b"]
            i, f, gg, o = np.split(z, 4, -1)
            c[li] = sig(f) * c[li] + sig(i) * np.tanh(gg)
            h[li] = sig(o) * np.tanh(c[li])
            x = h[li]
        w_out = np.asarray(mp["out"]["w"], np.float64)[:, 0]
        outs.append(output_scale * (x @ w_out + float(mp["out"]["b"])))
    return outs


def test_lstm_path_matches_numpy_reference():
    mp = init_lstm_optimizer(jax.random.key(3))
    mp["out"]["w"] = mp["out"]["w"] * 30.0  # make the head's output sizeable
    mp["out"]["b"] = jnp.asarray(0.2)
    opt = lstm_optimizer(mp)
    keys = jax.random.split(jax.random.key(10), 4)
    grads_seq = [jax.random.normal(k, (4, 5)) * 10.0 ** (t - 2) for t, k in enumerate(keys)]
    grads_seq[1] = grads_seq[1].at[0, 0].set(1e-7)  # small-gradient branch
    params = {"w": jnp.zeros((4, 5))}
    state = opt.init(params)
    ref = _np_reference(mp, grads_seq)
    for g, r in zip(grads_seq, ref, strict=True):
        upd, state = opt.update({"w": g}, state, params)
        np.testing.assert_allclose(np.asarray(upd["w"]).ravel(), r, rtol=2e-5, atol=1e-6)
    assert np.std(ref[-1]) > 1e-3  # the LSTM output depends on the coordinate


def test_state_shapes_follow_pytree():
    params = _params()
    opt = lstm_optimizer(init_lstm_optimizer(jax.random.key(0), hidden_size=7, num_layers=3))
    state = opt.init(params)
    for leaf, h, c in zip(
        jax.tree.leaves(params), jax.tree.leaves(state.h), jax.tree.leaves(state.c), strict=True
    ):
        assert h.shape == (3, *leaf.shape, 7) == c.shape
    upd, new_state = jax.jit(opt.update)(jax.grad(_loss)(params), state, params)
    assert jax.tree.structure(upd) == jax.tree.structure(params)
    assert jax.tree.map(jnp.shape, new_state) == jax.tree.map(jnp.shape, state)


def test_works_in_chain_and_jit():
    params = _params()
    lr = 0.05
    mp = lstm_optimizer_params_sgd(lr)
    chained = optax.chain(lstm_optimizer(mp), optax.scale(2.0))
    state = chained.init(params)
    g = jax.grad(_loss)(params)
    upd, _ = jax.jit(chained.update)(g, state, params)
    jax.tree.map(lambda u, gg: np.testing.assert_allclose(u, -2 * lr * gg, rtol=1e-6), upd, g)


def test_vmap_over_batch_matches_loop():
    mp = init_lstm_optimizer(jax.random.key(1))
    opt = lstm_optimizer(mp)
    batch = jax.vmap(lambda i: {"a": jnp.sin(jnp.arange(6.0) + i), "b": jnp.cos(i)})(
        jnp.arange(3.0)
    )
    grads = jax.vmap(jax.grad(_loss))(batch)
    states = jax.vmap(opt.init)(batch)
    upd, _ = jax.jit(jax.vmap(opt.update))(grads, states, batch)
    single = jax.jit(lambda g, p: opt.update(g, opt.init(p), p)[0])
    for i in range(3):
        gi = jax.tree.map(lambda x, i=i: x[i], grads)
        pi = jax.tree.map(lambda x, i=i: x[i], batch)
        ui = single(gi, pi)
        jax.tree.map(
            lambda a, b, i=i: np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-7), upd, ui
        )


def test_differentiable_wrt_meta_params():
    params = {"x": jnp.array([1.0, -2.0, 3.0])}

    def meta_loss(mp):
        opt = lstm_optimizer(mp)
        p, s = params, opt.init(params)
        for _ in range(3):
            g = jax.grad(lambda q: jnp.sum(q["x"] ** 2))(p)
            u, s = opt.update(g, s, p)
            p = optax.apply_updates(p, u)
        return jnp.sum(p["x"] ** 2)

    g = jax.jit(jax.grad(meta_loss))(init_lstm_optimizer(jax.random.key(0)))
    norms = [float(jnp.linalg.norm(x)) for x in jax.tree.leaves(g)]
    assert all(np.isfinite(norms)) and min(norms) > 0
