"""Reptile, Meta-SGD and ANIL against hand-computed updates and MAML."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mamlx import Episode, anil, maml, metasgd, reptile
from mamlx.algorithms import head_by_path
from mamlx.datasets import sinusoid_model
from mamlx.models import tree_cast
from mamlx.tasks import sinusoid
from mamlx.testing import check_meta_learner


def linear_apply(theta, x):
    return x @ theta


def _linear_tasks(rng, tasks, n, d):
    """``(xs, ys, episodes, phi)``: random linear-regression tasks whose support and query
    sets are the same ``n`` points, and a random start ``phi`` (float32)."""
    xs = rng.normal(size=(tasks, n, d)).astype(np.float32)
    ys = rng.normal(size=(tasks, n)).astype(np.float32)
    episodes = Episode(jnp.asarray(xs), jnp.asarray(ys), jnp.asarray(xs), jnp.asarray(ys))
    return xs, ys, episodes, rng.normal(size=d).astype(np.float32)


@pytest.mark.parametrize("task_map", ["vmap", "map"])
def test_reptile_update_equals_hand_computed_rule(task_map):
    rng = np.random.default_rng(0)
    d, n, tasks, inner_steps, alpha, eps = 3, 5, 4, 3, 0.05, 0.5
    xs, ys, eps_batch, phi0 = _linear_tasks(rng, tasks, n, d)
    learner = reptile(
        linear_apply,
        lambda k: jnp.asarray(phi0),
        inner_opt=alpha,
        inner_steps=inner_steps,
        task_map=task_map,
    )
    opt = optax.sgd(eps)
    phi, opt_state = jnp.asarray(phi0), opt.init(jnp.asarray(phi0))
    ref = phi0.astype(np.float64)
    for _ in range(3):  # three outer steps
        g, _ = jax.jit(learner.meta_grad)(phi, eps_batch)
        upd, opt_state = opt.update(g, opt_state, phi)
        phi = optax.apply_updates(phi, upd)
        adapted = []
        for t in range(tasks):  # plain SGD on the MSE, by hand
            th = ref.copy()
            for _ in range(inner_steps):
                th = th - alpha * 2.0 / n * xs[t].T @ (xs[t] @ th - ys[t])
            adapted.append(th)
        ref = ref + eps * (np.mean(adapted, 0) - ref)
        np.testing.assert_allclose(phi, ref, rtol=1e-5, atol=1e-6)


def test_reptile_looping_over_tasks_equals_vectorizing_them_with_a_stateful_inner_optimizer():
    """``task_map="map"`` takes every task's first inner step at once and hands its Adam state
    to the looped later steps; vectorizing the tasks (no such split) gives the same update
    and metrics, in float64."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        _, _, eps_batch, phi0 = _linear_tasks(rng, 4, 5, 3)
        eps_batch = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), eps_batch)
        out = {}
        for task_map in ("map", "vmap"):
            learner = reptile(
                linear_apply, None, inner_opt=optax.adam(0.1), inner_steps=3, task_map=task_map
            )
            out[task_map] = learner.meta_grad(jnp.asarray(phi0, jnp.float64), eps_batch)
        np.testing.assert_allclose(out["map"][0], out["vmap"][0], rtol=1e-12)
        np.testing.assert_allclose(out["map"][1]["loss"], out["vmap"][1]["loss"], rtol=1e-12)
        assert float(jnp.linalg.norm(out["map"][0])) > 0


def test_reptile_outer_update_composes_with_optax_chain():
    learner = reptile(*sinusoid_model((8,)), inner_opt=0.02, inner_steps=2)
    params = learner.init(jax.random.PRNGKey(0))
    eps = sinusoid(5).sample_batch(jax.random.PRNGKey(1), None, 3)
    g, _ = learner.meta_grad(params, eps)
    opt = optax.chain(optax.clip_by_global_norm(1e-3), optax.sgd(1.0))
    upd, _ = opt.update(g, opt.init(params), params)
    norm = optax.tree.norm(upd)
    assert 0 < float(norm) <= 1e-3 + 1e-7


def test_metasgd_with_equal_frozen_rates_equals_maml():
    apply_fn, init_fn = sinusoid_model((16,))
    eps = sinusoid(5).sample_batch(jax.random.PRNGKey(1), None, 3)
    m = maml(apply_fn, init_fn, inner_lr=0.03, inner_steps=2)
    s = metasgd(apply_fn, init_fn, inner_lr=0.03, inner_steps=2, learn_lr=False)
    meta = s.init(jax.random.PRNGKey(0))
    g_maml, met_m = m.meta_grad(meta["params"], eps)
    g_sgd, met_s = s.meta_grad(meta, eps)
    np.testing.assert_allclose(met_m["loss"], met_s["loss"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g_maml), jax.tree.leaves(g_sgd["params"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(g_sgd["lr"]))
    # learned rates do receive a meta-gradient
    g_learn, _ = metasgd(apply_fn, init_fn, inner_lr=0.03, inner_steps=2).meta_grad(meta, eps)
    assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g_learn["lr"])) > 0
    # Meta-SGD's inner_lr is the initial rate of every parameter, never a transformation.
    for bad in (optax.adam(0.1), -0.1, float("nan")):
        with pytest.raises(ValueError, match="Meta-SGD's inner_lr"):
            metasgd(apply_fn, init_fn, inner_lr=bad)


def test_anil_inner_loop_leaves_the_body_untouched():
    apply_fn, init_fn = sinusoid_model((16, 16))
    learner = anil(
        apply_fn, init_fn, inner_lr=0.1, inner_steps=3, is_head=head_by_path("layers", 2)
    )
    params = learner.init(jax.random.PRNGKey(0))
    ep = sinusoid(5).sample(jax.random.PRNGKey(2))
    adapted = learner.adapt(params, ep.support_x, ep.support_y)
    for i in (0, 1):
        for k in ("kernel", "bias"):
            np.testing.assert_array_equal(adapted["layers"][i][k], params["layers"][i][k])
    assert not np.allclose(adapted["layers"][2]["kernel"], params["layers"][2]["kernel"])
    # the inner-loop gradient is zero for body parameters, yet the meta-gradient is not
    inner_grad = jax.grad(
        lambda p: learner.adapt(p, ep.support_x, ep.support_y)["layers"][2]["bias"].sum()
    )(params)
    assert float(jnp.abs(inner_grad["layers"][0]["kernel"]).max()) > 0  # head depends on body
    g, _ = learner.meta_grad(params, jax.tree.map(lambda a: a[None], ep))
    assert float(jnp.abs(g["layers"][0]["kernel"]).max()) > 0


def test_anil_selector_must_match():
    learner = anil(*sinusoid_model((4,)), inner_lr=0.1, is_head=head_by_path("nope"))
    ep = sinusoid(5).sample(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="matched no parameters"):
        learner.adapt(learner.init(jax.random.PRNGKey(0)), ep.support_x, ep.support_y)


@pytest.mark.parametrize("name", ["reptile", "metasgd", "anil"])
def test_conformance(name):
    apply_fn, init_fn = sinusoid_model((16,))
    make = {
        "reptile": lambda: reptile(apply_fn, init_fn, inner_opt=0.02, inner_steps=3),
        "metasgd": lambda: metasgd(apply_fn, init_fn, inner_lr=0.02),
        "anil": lambda: anil(apply_fn, init_fn, inner_lr=0.02, is_head=head_by_path("layers", 1)),
    }
    check_meta_learner(make[name](), sinusoid(5))


@pytest.mark.parametrize("name", ["metasgd", "anil"])
def test_finite_differences_float64(name):
    with jax.enable_x64(True):
        apply_fn, init_fn = sinusoid_model((8,))
        init64 = lambda k: tree_cast(init_fn(k), jnp.float64)
        learner = {
            "metasgd": lambda: metasgd(apply_fn, init64, inner_lr=0.05, inner_steps=2),
            "anil": lambda: anil(
                apply_fn, init64, inner_lr=0.05, inner_steps=2, is_head=head_by_path("layers", 1)
            ),
        }[name]()
        check_meta_learner(learner, sinusoid(5), check_fd=True, fd_eps=1e-5)


def _bn_net():
    """``(apply_fn, init_fn)`` of a 1-8-1 network with batch norm (batch statistics)."""
    from flax import nnx

    from mamlx.models import model

    class BNNet(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(1, 8, rngs=rngs)
            self.bn = nnx.BatchNorm(8, use_running_average=False, rngs=rngs)
            self.l2 = nnx.Linear(8, 1, rngs=rngs)

        def __call__(self, x):
            return self.l2(jax.nn.relu(self.bn(self.l1(x))))

    return model(BNNet)


def test_non_transductive_prediction_ignores_other_queries():
    apply_fn, init_fn = _bn_net()
    ep = sinusoid(5, queries=6).sample(jax.random.PRNGKey(0))
    for transductive in (True, False):
        learner = maml(apply_fn, init_fn, inner_lr=0.01, transductive=transductive)
        params = learner.init(jax.random.PRNGKey(1))
        state = learner.adapt(params, ep.support_x, ep.support_y)
        full = learner.predict(state, ep.query_x)
        first = learner.predict(state, ep.query_x[:2])
        same = np.allclose(full[:2], first, atol=1e-5)
        assert same == (not transductive)
    # Non-transductive: query i is the last row of the network on support ∪ {x_i}, its own
    # row, by hand; any other row of that batch (a support example's, say row 0) differs.
    adapted = learner.adapt(params, ep.support_x, ep.support_y).params
    for i, q in enumerate(ep.query_x):
        rows = apply_fn(adapted, jnp.concatenate([ep.support_x, q[None]]))
        np.testing.assert_allclose(full[i], rows[-1], rtol=1e-5, atol=1e-6)
        assert not np.allclose(full[i], rows[0], rtol=1e-5, atol=1e-6), "row 0 is not its row"


def test_non_transductive_reptile_trains_as_transductive_and_logs_the_query_batch():
    """Reptile's update never reads the queries; its logged query metrics predict the query
    batch at once (one forward pass, not one per query), so with batch norm the
    non-transductive learner's meta_grad equals the transductive one's, metrics included,
    and the metrics are the query batch's loss through the adapted weights, by hand."""
    apply_fn, init_fn = _bn_net()
    eps = sinusoid(5, queries=6).sample_batch(jax.random.PRNGKey(0), None, 3)
    make = lambda t: reptile(apply_fn, init_fn, inner_opt=0.01, inner_steps=2, transductive=t)
    off, on = make(False), make(True)
    params = off.init(jax.random.PRNGKey(1))
    g_off, m_off = jax.jit(off.meta_grad)(params, eps)
    g_on, m_on = jax.jit(on.meta_grad)(params, eps)
    assert _max_abs_diff(g_off, g_on) == 0.0
    np.testing.assert_allclose(m_off["loss"], m_on["loss"], rtol=1e-6)
    losses = []
    for t in range(3):
        ep = jax.tree.map(lambda a, t=t: a[t], eps)
        adapted = on.adapt(params, ep.support_x, ep.support_y)
        losses.append(jnp.mean((apply_fn(adapted, ep.query_x) - ep.query_y) ** 2))
    np.testing.assert_allclose(m_off["loss"], np.mean(losses), rtol=1e-5)
    # ...while test-time prediction keeps the non-transductive rule: it differs.
    ep = jax.tree.map(lambda a: a[0], eps)
    pred_off = off.predict(off.adapt(params, ep.support_x, ep.support_y), ep.query_x)
    assert not np.allclose(
        pred_off, apply_fn(on.adapt(params, ep.support_x, ep.support_y), ep.query_x), atol=1e-5
    )


def _mse_loss(apply_fn):
    return lambda p, x, y: jnp.mean((apply_fn(p, x) - y) ** 2)


def _max_abs_diff(a, b):
    return max(
        float(jnp.max(jnp.abs(x - y)))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_anil_first_order_meta_gradient_is_query_gradient_at_adapted_params():
    """First order: the head's inner gradient is a constant, so ∂h'/∂(body, h) = (0, I) and
    the meta-gradient is ∇L_query at (body, h') for body and head alike."""
    with jax.enable_x64(True):
        apply_fn, init_fn = sinusoid_model((8,))
        params = tree_cast(init_fn(jax.random.PRNGKey(0)), jnp.float64)
        eps = tree_cast(sinusoid(5).sample_batch(jax.random.PRNGKey(3), None, 2), jnp.float64)
        alpha, steps = 0.1, 2
        loss = _mse_loss(apply_fn)
        make = lambda fo: anil(
            apply_fn,
            lambda k: params,
            inner_lr=alpha,
            inner_steps=steps,
            is_head=head_by_path("layers", 1),
            first_order=fo,
        )
        refs = []
        for i in range(2):
            ep = jax.tree.map(lambda a, i=i: a[i], eps)
            adapted = jax.tree.map(lambda a: a, params)
            for _ in range(steps):  # SGD on the head (layers[1]) only
                g = jax.grad(loss)(adapted, ep.support_x, ep.support_y)
                adapted["layers"][1] = jax.tree.map(
                    lambda h, gh: h - alpha * gh, adapted["layers"][1], g["layers"][1]
                )
            refs.append(jax.grad(loss)(adapted, ep.query_x, ep.query_y))
        want = jax.tree.map(lambda a, b: (a + b) / 2, *refs)
        g_fo, _ = jax.jit(make(True).meta_grad)(params, eps)
        for a, b in zip(jax.tree.leaves(g_fo), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
        g_so, _ = jax.jit(make(False).meta_grad)(params, eps)
        assert _max_abs_diff(g_so, g_fo) > 1e-3  # second order keeps ∂h'/∂(body, h)


def test_metasgd_first_order_meta_gradient_matches_hand_written_rule():
    """First order stops gradients through the inner gradients g_k only; the update
    −α ⊙ g_k stays differentiable in α. So with θ_{k+1} = θ_k − α ⊙ g_k and G = ∇L_query(θ_K):
    d/dθ = G and d/dα = −G ⊙ Σ_k g_k."""
    with jax.enable_x64(True):
        apply_fn, init_fn = sinusoid_model((8,))
        eps = tree_cast(sinusoid(5).sample_batch(jax.random.PRNGKey(3), None, 2), jnp.float64)
        steps = 2
        loss = _mse_loss(apply_fn)
        make = lambda fo: metasgd(
            apply_fn, init_fn, inner_lr=0.05, inner_steps=steps, first_order=fo
        )
        meta = tree_cast(make(True).init(jax.random.PRNGKey(0)), jnp.float64)
        rng = np.random.default_rng(0)  # distinct per-parameter rates
        meta["lr"] = jax.tree.map(lambda a: a * rng.uniform(0.5, 1.5, a.shape), meta["lr"])
        refs = []
        for i in range(2):
            ep = jax.tree.map(lambda a, i=i: a[i], eps)
            theta, g_sum = meta["params"], jax.tree.map(jnp.zeros_like, meta["params"])
            for _ in range(steps):
                g = jax.grad(loss)(theta, ep.support_x, ep.support_y)
                theta = jax.tree.map(lambda t, a, gk: t - a * gk, theta, meta["lr"], g)
                g_sum = jax.tree.map(jnp.add, g_sum, g)
            g_query = jax.grad(loss)(theta, ep.query_x, ep.query_y)
            refs.append(
                {"params": g_query, "lr": jax.tree.map(lambda q, s: -q * s, g_query, g_sum)}
            )
        want = jax.tree.map(lambda a, b: (a + b) / 2, *refs)
        g_fo, _ = jax.jit(make(True).meta_grad)(meta, eps)
        for a, b in zip(jax.tree.leaves(g_fo), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
        g_so, _ = jax.jit(make(False).meta_grad)(meta, eps)
        assert _max_abs_diff(g_so["params"], g_fo["params"]) > 1e-3
        assert _max_abs_diff(g_so["lr"], g_fo["lr"]) > 1e-3


def test_reptile_inner_minibatches_equal_hand_computed_sgd_on_the_drawn_batches():
    """inner_batch: step k of task i is plain SGD on the examples minibatch_indices draws
    with task i's key (split from meta_grad's key as map_tasks does), by hand in float64."""
    from mamlx.algorithms.reptile import minibatch_indices

    rng = np.random.default_rng(1)
    d, n, tasks, steps, batch, alpha = 3, 6, 2, 4, 4, 0.05
    xs, ys, eps, phi = _linear_tasks(rng, tasks, n, d)
    key = jax.random.PRNGKey(3)
    for task_map in ("vmap", "map"):
        learner = reptile(
            linear_apply, None, inner_opt=alpha, inner_steps=steps, inner_batch=batch,
            task_map=task_map,
        )  # fmt: skip
        g, _ = jax.jit(learner.meta_grad)(jnp.asarray(phi), eps, key)
        adapted = []
        for t, k in enumerate(jax.random.split(key, tasks)):
            idx = np.asarray(minibatch_indices(k, n, batch, steps))
            assert sorted(idx.ravel()[:n]) == list(range(n))  # the first pass: each once
            th = phi.astype(np.float64)
            for b in idx:
                x, y = xs[t][b], ys[t][b]
                th = th - alpha * 2.0 / batch * x.T @ (x @ th - y)
            adapted.append(th)
        np.testing.assert_allclose(g, phi - np.mean(adapted, 0), rtol=1e-5, atol=1e-6)
    # Batches of the whole support set are the full-batch learner, key or not.
    full = reptile(linear_apply, None, inner_opt=alpha, inner_steps=steps)
    whole = reptile(linear_apply, None, inner_opt=alpha, inner_steps=steps, inner_batch=n)
    np.testing.assert_array_equal(
        whole.meta_grad(jnp.asarray(phi), eps, key)[0], full.meta_grad(jnp.asarray(phi), eps)[0]
    )


def test_reptile_inner_minibatches_need_a_key_and_a_valid_size():
    learner = reptile(linear_apply, None, inner_opt=0.1, inner_steps=2, inner_batch=2)
    eps = Episode(jnp.ones((1, 4, 3)), jnp.ones((1, 4)), jnp.ones((1, 4, 3)), jnp.ones((1, 4)))
    with pytest.raises(ValueError, match="inner_batch=2 .*pass meta_grad a key"):
        learner.meta_grad(jnp.ones(3), eps)
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="inner_batch must be an integer >= 0"):
            reptile(linear_apply, None, inner_opt=0.1, inner_batch=bad)
    from mamlx.algorithms.reptile import minibatch_indices

    with pytest.raises(ValueError, match="minibatches of 5 from 4 examples"):
        minibatch_indices(jax.random.PRNGKey(0), 4, 5, 1)
    # Passes after the first are fresh permutations: every example once per pass.
    idx = np.asarray(minibatch_indices(jax.random.PRNGKey(1), 5, 5, 3))
    assert all(sorted(row) == list(range(5)) for row in idx) and len({tuple(r) for r in idx}) > 1


def test_reptile_presets_train_on_the_papers_minibatches():
    """The Reptile presets carry the reference code's inner batch (one pass over the support
    set: 5 at 5-way 1-shot, 20 at 20-way 5-shot) to the learner: its meta_grad asks for a key."""
    from mamlx.experiments import build_learner
    from mamlx.presets import preset_config

    for name, batch in (("reptile-5w1s", 5), ("reptile-20w5s", 20)):
        config = preset_config(name, filters=4)
        assert config.learner.inner_batch == batch
        assert batch * config.learner.inner_steps == config.ways * config.shots
        learner = build_learner(config)
        n = config.ways * config.shots
        ep = Episode(
            jnp.zeros((1, n, 28, 28, 1)), jnp.zeros((1, n), jnp.int32),
            jnp.zeros((1, 2, 28, 28, 1)), jnp.zeros((1, 2), jnp.int32),
        )  # fmt: skip
        with pytest.raises(ValueError, match=f"inner_batch={batch} .*key"):
            learner.meta_grad(learner.init(jax.random.PRNGKey(0)), ep)


def _adam_b1_zero(theta, v, t, grad, lr, b2=0.999, eps=1e-8):
    """One step of Adam with β1 = 0 in float64: ``(theta, v, t)`` after it."""
    t += 1
    v = b2 * v + (1 - b2) * grad**2
    return theta - lr * grad / (np.sqrt(v / (1 - b2**t)) + eps), v, t


def test_reptile_carried_inner_state_equals_hand_computed_sequential_adam():
    """reset_inner_state=False (Nichol et al.'s code): the inner Adam state runs on from
    task to task, in order, through meta-steps; φ moves by the outer SGD, the state is
    replaced by the one the meta-batch ended with, and a test task's inner loop starts from
    it. Hand-computed Adam (β1 = 0) in float64 on linear-regression tasks. (Not through
    check_meta_learner: its "meta-loss is the task mean of outer_loss" does not hold when
    task i starts from the state tasks 0 … i-1 left, by design.)"""
    from mamlx.algorithms.reptile import CarriedParams, carried_state_outer

    rng = np.random.default_rng(4)
    d, n, tasks, steps, lr, eps = 3, 5, 3, 4, 0.05, 0.5
    xs, ys, episodes, phi0 = _linear_tasks(rng, tasks, n, d)
    inner_opt = optax.adam(lr, b1=0.0)
    kwargs = dict(inner_opt=inner_opt, inner_steps=steps, reset_inner_state=False)
    learner = reptile(linear_apply, lambda k: jnp.asarray(phi0), **kwargs)
    params = learner.init(jax.random.PRNGKey(0))
    assert isinstance(params, CarriedParams)
    tx = carried_state_outer(optax.sgd(eps))
    opt_state = tx.init(params)
    grad = lambda th, t: 2.0 / n * xs[t].T @ (xs[t] @ th - ys[t])
    phi, v, count = phi0.astype(np.float64), np.zeros(d), 0
    for _ in range(3):  # three meta-steps
        g, _ = jax.jit(learner.meta_grad)(params, episodes)
        updates, opt_state = tx.update(g, opt_state, params)
        params = optax.apply_updates(params, updates)
        adapted = []
        for t in range(tasks):  # in order, the state running on
            th = phi.copy()
            for _ in range(steps):
                th, v, count = _adam_b1_zero(th, v, count, grad(th, t), lr)
            adapted.append(th)
        phi = phi + eps * (np.mean(adapted, 0) - phi)
        np.testing.assert_allclose(params.params, phi, rtol=1e-5, atol=1e-6)
        adam = params.inner_state[0]
        assert int(adam.count) == count
        np.testing.assert_allclose(adam.nu, v, rtol=1e-4, atol=1e-9)
    # Test time: the inner loop starts from the carried state (and leaves it as it was).
    x, y = jnp.asarray(xs[0]), jnp.asarray(ys[0])
    th, vt, ct = phi.copy(), v.copy(), count
    for _ in range(steps):
        th, vt, ct = _adam_b1_zero(th, vt, ct, grad(th, 0), lr)
    np.testing.assert_allclose(learner.adapt(params, x, y), th, rtol=1e-4, atol=1e-6)
    fresh = reptile(linear_apply, None, inner_opt=inner_opt, inner_steps=steps)
    assert not np.allclose(fresh.adapt(params.params, x, y), th, atol=1e-3)
    assert int(params.inner_state[0].count) == count


def test_reptile_carried_state_needs_its_outer_optimizer_and_a_bool():
    from mamlx.algorithms.reptile import carried_state_outer

    tx = carried_state_outer(optax.sgd(0.1))
    with pytest.raises(ValueError, match="meta-parameters are CarriedParams; got ArrayImpl"):
        tx.init(jnp.ones(3))
    with pytest.raises(ValueError, match="reset_inner_state must be True or False"):
        reptile(linear_apply, None, inner_opt=0.1, reset_inner_state="False")


def test_reptile_presets_carry_the_inner_state_through_fit():
    """The Reptile presets carry Adam's state (Nichol et al.'s code): a configuration with
    reset_inner_state=False builds CarriedParams and an outer optimizer that replaces the
    state, so two fit steps leave Adam's step count at 2 meta-steps x meta-batch x inner
    steps (a plain outer SGD on it would leave ε times that)."""
    from mamlx.config import outer_optimizer
    from mamlx.experiments import build_learner
    from mamlx.presets import preset_config
    from mamlx.tasks import fewshot_sampler
    from mamlx.train import init_state, make_step

    config = preset_config("reptile-5w5s", filters=4, image_size=8, meta_lr=0.5)
    assert config.learner.reset_inner_state is False
    learner, tx = build_learner(config), outer_optimizer(config)
    data = jax.random.uniform(jax.random.PRNGKey(0), (8, 20, 8, 8, 1))
    sampler = fewshot_sampler(config.ways, config.shots, 2)
    step = jax.jit(make_step(learner, sampler, tx, meta_batch=2))
    state = init_state(learner, tx, jax.random.PRNGKey(1))
    for _ in range(2):
        state, _ = step(state, data)
    assert int(state.params.inner_state[0].count) == 2 * 2 * config.learner.inner_steps
