"""Tests for Ravi & Larochelle's (2017) meta-learner LSTM update rule."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mamlx.optimizers import (
    gate_values,
    init_meta_lstm,
    meta_lstm_optimizer,
    meta_lstm_params_sgd,
    meta_lstm_trajectory,
)


def _loss(p):
    return jnp.sum((p["w"] @ p["v"] - 1.0) ** 2) + jnp.sum(jnp.sin(p["v"]))


def _params():
    k1, k2 = jax.random.split(jax.random.key(0))
    return {"w": jax.random.normal(k1, (3, 4)), "v": jax.random.normal(k2, (4,))}


def test_forget_one_input_eta_is_sgd():
    lr = 0.05
    mp = meta_lstm_params_sgd(lr)
    opt = meta_lstm_optimizer(mp)
    eta = float(jax.nn.sigmoid(mp["input_gate"]["b"]))
    assert abs(eta - lr) < 1e-7
    sgd = optax.sgd(eta)

    @jax.jit
    def step(p, s, q, r):
        loss, g = jax.value_and_grad(_loss)(p)
        u, s = opt.update(g, s, p, value=loss)
        v, r = sgd.update(jax.grad(_loss)(q), r, q)
        return optax.apply_updates(p, u), s, optax.apply_updates(q, v), r

    p = q = _params()
    s, r = opt.init(p), sgd.init(q)
    for _ in range(10):
        p, s, q, r = step(p, s, q, r)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), p, q)
        gates = gate_values(s)
        assert all(bool(jnp.all(f == 1.0)) for f in jax.tree.leaves(gates["forget"]))
        jax.tree.map(lambda i: np.testing.assert_allclose(i, eta, rtol=1e-6), gates["input"])
    assert float(jnp.max(jnp.abs(p["v"] - _params()["v"]))) > 1e-2


@pytest.mark.parametrize("p", [10.0, 2.0])  # preprocessing of gradient and loss alike
def test_gates_match_numpy_reference(p):
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))
    mp = init_meta_lstm(jax.random.key(1))
    mp["input_gate"]["w"] = mp["input_gate"]["w"] * 100.0  # make every input matter
    mp["forget_gate"]["w"] = mp["forget_gate"]["w"] * 100.0
    opt = meta_lstm_optimizer(mp) if p == 10.0 else meta_lstm_optimizer(mp, p=p)
    theta = jnp.array([0.5, -1.0, 2.0])
    state = opt.init({"t": theta})
    lay = {k: np.asarray(v, np.float64) for k, v in mp["lstm"][0].items()}
    hid = lay["b"].shape[0] // 4
    h, c = np.zeros((3, hid)), np.zeros((3, hid))
    i_prev = f_prev = np.zeros(3)
    th = np.asarray(theta, np.float64)

    def pre(x):
        x = np.asarray(x, np.float64)
        big = np.abs(x) >= np.exp(-p)
        return np.stack(
            [
                np.where(big, np.log(np.where(big, np.abs(x), 1)) / p, -1),
                np.where(big, np.sign(x), np.exp(p) * x),
            ],
            -1,
        )

    steps = [([0.3, -2.0, 1e-6], 1.7), ([-0.1, 0.4, 3.0], 0.02), ([0.2, 1e-3, -0.5], 0.05)]
    for t, (g, loss) in enumerate(steps):  # with p=2, 0.02 and 1e-3 fall below e^-p
        g = np.asarray(g)
        upd, state = opt.update(
            {"t": jnp.asarray(g, jnp.float32)}, state, {"t": theta}, value=jnp.asarray(loss)
        )
        x = np.concatenate([np.broadcast_to(pre(loss), (3, 2)), pre(g)], -1)
        z = np.concatenate([x, h], -1) @ lay["w"] + lay["b"]
        zi, zf, zg, zo = np.split(z, 4, -1)
        c = sig(zf) * c + sig(zi) * np.tanh(zg)
        h = sig(zo) * np.tanh(c)
        wi, wf = (np.asarray(mp[k]["w"], np.float64) for k in ("input_gate", "forget_gate"))
        i = sig(h @ wi[:hid] + wi[hid] * th + wi[hid + 1] * i_prev + float(mp["input_gate"]["b"]))
        f = sig(h @ wf[:hid] + wf[hid] * th + wf[hid + 1] * f_prev + float(mp["forget_gate"]["b"]))
        np.testing.assert_allclose(state.input_gate["t"], i, rtol=1e-5, err_msg=f"step {t}")
        np.testing.assert_allclose(state.forget_gate["t"], f, rtol=1e-5)
        np.testing.assert_allclose(upd["t"], (f - 1) * th - i * g, rtol=1e-4, atol=1e-7)
        i_prev, f_prev = i, f
        theta = theta + upd["t"]
        th = th + (f - 1) * th - i * g
    assert np.ptp(i) > 1e-3  # gates differ across coordinates


def test_requires_loss_value_and_works_in_chain():
    opt = meta_lstm_optimizer(meta_lstm_params_sgd(0.1))
    p = _params()
    with pytest.raises(ValueError, match="value"):
        opt.update(jax.grad(_loss)(p), opt.init(p), p)
    chained = optax.chain(optax.clip_by_global_norm(1e6), opt, optax.scale(2.0))
    g = jax.grad(_loss)(p)
    u, _ = jax.jit(chained.update)(g, chained.init(p), p, value=_loss(p))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, -0.2 * b, rtol=1e-5), u, g)


def test_vmap_and_state_shapes():
    opt = meta_lstm_optimizer(init_meta_lstm(jax.random.key(0), hidden_size=5))
    batch = jax.vmap(lambda i: jax.tree.map(lambda x: x + i, _params()))(jnp.arange(2.0))
    states = jax.vmap(opt.init)(batch)
    assert states.h["w"].shape == (2, 3, 4, 5) and states.input_gate["v"].shape == (2, 4)
    loss, g = jax.vmap(jax.value_and_grad(_loss))(batch)
    upd_fn = jax.jit(jax.vmap(lambda g, s, p, v: opt.update(g, s, p, value=v)))
    u, _ = upd_fn(g, states, batch, loss)
    assert jax.tree.map(jnp.shape, u) == jax.tree.map(jnp.shape, batch)


def test_trajectory_trace_and_meta_gradient():
    mp = init_meta_lstm(jax.random.key(2))
    init = _params()

    def outer(mp, init):
        final, trace = meta_lstm_trajectory(mp, _loss, init, 5)
        return _loss(final), trace

    (val, trace), (g_mp, g_init) = jax.jit(jax.value_and_grad(outer, argnums=(0, 1), has_aux=True))(
        mp, init
    )
    assert trace["loss"].shape == (5,) and trace["input"]["w"].shape == (5, 3, 4)
    assert float(jnp.min(trace["forget"]["w"])) > 0.9  # paper init: forget gate near 1
    for leaf in jax.tree.leaves((g_mp, g_init)):
        assert np.all(np.isfinite(np.asarray(leaf)))
    assert float(jnp.linalg.norm(g_mp["input_gate"]["b"])) > 0
    assert float(jnp.linalg.norm(g_init["w"])) > 0
