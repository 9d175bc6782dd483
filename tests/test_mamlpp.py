"""MAML++ (Antoniou et al. 2019): every option against MAML or the hand-unrolled reference
(:func:`mamlx.references.mamlpp_reference`)."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from metric_helpers import tiny_data

from mamlx import references as refs
from mamlx.algorithms.maml import fomaml, maml
from mamlx.algorithms.mamlpp import is_norm_param, mamlpp, msl_weights
from mamlx.config import FewShotConfig, outer_optimizer
from mamlx.models import model, tree_cast
from mamlx.models.mlp import FCNet
from mamlx.tasks import fewshot_sampler
from mamlx.train import fit, init_state

WAYS, SIZE, LR = 3, 4, 0.3


def _net():
    """A float64 fully connected classifier with batch norm (FCNet, two hidden layers)."""
    apply_fn, init_fn = model(lambda r: FCNet(WAYS, in_features=SIZE * SIZE, hidden=(6, 5), rngs=r))
    return apply_fn, lambda k: tree_cast(init_fn(k), jnp.float64)


def _episodes(n=2, seed=3):
    data = tiny_data(classes=6, examples=6, size=SIZE, dtype=jnp.float64)
    return fewshot_sampler(WAYS, 2, 2).sample_batch(jax.random.PRNGKey(seed), data, n)


def _close(a, b, rtol=1e-10, atol=1e-12):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def _max_diff(a, b):
    return max(
        float(jnp.abs(x - y).max())
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


# --- the schedule -------------------------------------------------------------------------


@pytest.mark.parametrize("k,msl_epochs", [(5, 10), (3, 4), (2, 1)])
def test_msl_weights_follow_the_papers_loop_then_only_the_last_step(k, msl_epochs):
    epoch_steps = 7
    for epoch in range(msl_epochs + 3):
        for step in (epoch * epoch_steps, epoch * epoch_steps + epoch_steps - 1):
            w = np.asarray(msl_weights(step, k, msl_epochs, epoch_steps))
            # the authors' loop over the steps (the reference's)
            paper = refs.mamlpp_importance(epoch, k, msl_epochs)
            want = paper if epoch < msl_epochs else np.eye(k)[-1]
            np.testing.assert_allclose(w, want, atol=1e-7)
            assert math.isclose(w.sum(), 1.0, abs_tol=1e-6)
    np.testing.assert_array_equal(np.asarray(msl_weights(None, k, msl_epochs, 7)), np.eye(k)[-1])


# --- all options off, and the multi-step loss ---------------------------------------------


def test_all_options_off_is_maml_step_for_step():
    with jax.enable_x64(True):
        apply_fn, init_fn = _net()
        a = maml(apply_fn, init_fn, inner_lr=LR, inner_steps=2)
        b = mamlpp(apply_fn, init_fn, inner_lr=LR, inner_steps=2)
        pa, pb = a.init(jax.random.PRNGKey(0)), b.init(jax.random.PRNGKey(0))
        _close(pa, pb["params"], 0, 0)
        opt = optax.adam(1e-2)
        sa, sb = opt.init(pa), opt.init(pb)
        grad_a = jax.jit(a.meta_grad)
        grad_b = jax.jit(lambda p, e, s: b.meta_grad(p, e, step=s))
        for i in range(3):
            eps = _episodes(seed=i)
            ga, ma = grad_a(pa, eps)
            gb, mb = grad_b(pb, eps, i)
            _close(ga, gb["params"])
            np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-12)
            ua, sa = opt.update(ga, sa, pa)
            ub, sb = opt.update(gb, sb, pb)
            pa, pb = optax.apply_updates(pa, ua), optax.apply_updates(pb, ub)
            _close(pa, pb["params"])


def test_multi_step_loss_on_the_last_step_alone_is_mamls_loss():
    with jax.enable_x64(True):
        apply_fn, init_fn = _net()
        ref = maml(apply_fn, init_fn, inner_lr=LR, inner_steps=3)
        msl = mamlpp(apply_fn, init_fn, inner_lr=LR, inner_steps=3, msl_weights=(0, 0, 1))
        params = ref.init(jax.random.PRNGKey(1))
        eps = _episodes()
        g_ref, m_ref = jax.jit(ref.meta_grad)(params, eps)
        g, m = jax.jit(lambda p, e: msl.meta_grad(p, e, step=0))({"params": params}, eps)
        _close(g_ref, g["params"])
        np.testing.assert_allclose(m_ref["loss"], m["loss"], rtol=1e-12)


def test_multi_step_meta_gradient_is_the_weighted_sum_of_mamls_after_k_steps():
    w = (0.2, 0.3, 0.5)
    with jax.enable_x64(True):
        apply_fn, init_fn = _net()
        msl = mamlpp(apply_fn, init_fn, inner_lr=LR, inner_steps=3, msl_weights=w)
        params = msl.init(jax.random.PRNGKey(2))["params"]
        eps = _episodes()
        got, _ = msl.meta_grad({"params": params}, eps, step=0)
        per_k = [
            maml(apply_fn, init_fn, inner_lr=LR, inner_steps=k + 1).meta_grad(params, eps)[0]
            for k in range(3)
        ]
        want = jax.tree.map(lambda *g: sum(wk * gk for wk, gk in zip(w, g, strict=True)), *per_k)
        _close(want, got["params"])
        assert _max_diff(per_k[0], per_k[2]) > 1e-4  # the steps' gradients really differ


def test_annealed_multi_step_loss_follows_the_training_step():
    with jax.enable_x64(True):
        apply_fn, init_fn = _net()
        kw = dict(inner_lr=LR, inner_steps=2, multi_step_loss=True, msl_epochs=2, epoch_steps=3)
        learner = mamlpp(apply_fn, init_fn, **kw)
        meta = learner.init(jax.random.PRNGKey(0))
        eps = _episodes()
        annealed = jax.jit(lambda m, e, s: learner.meta_grad(m, e, step=s)[0])
        for step in (0, 4, 6):
            w = tuple(float(x) for x in msl_weights(step, 2, 2, 3))
            fixed = mamlpp(apply_fn, init_fn, inner_lr=LR, inner_steps=2, msl_weights=w)
            _close(jax.jit(fixed.meta_grad)(meta, eps)[0], annealed(meta, eps, step))


# --- derivative-order annealing -----------------------------------------------------------


def test_derivative_order_annealing_switches_exactly_at_the_configured_step():
    with jax.enable_x64(True):
        apply_fn, init_fn = _net()
        da = mamlpp(
            apply_fn, init_fn, inner_lr=LR, inner_steps=2, first_order_epochs=2, epoch_steps=3
        )
        meta = da.init(jax.random.PRNGKey(0))
        eps = _episodes()
        first = jax.jit(fomaml(apply_fn, init_fn, inner_lr=LR, inner_steps=2).meta_grad)(
            meta["params"], eps
        )[0]
        second = jax.jit(maml(apply_fn, init_fn, inner_lr=LR, inner_steps=2).meta_grad)(
            meta["params"], eps
        )[0]
        assert _max_diff(first, second) > 1e-4
        step_fn = jax.jit(lambda m, e, s: da.meta_grad(m, e, step=s)[0])
        for step in (0, 5):
            _close(first, step_fn(meta, eps, step)["params"])
        for step in (6, 100):
            _close(second, step_fn(meta, eps, step)["params"])
        reference = refs.mamlpp_reference(
            apply_fn, inner_lr=LR, inner_steps=2, first_order_epochs=2, epoch_steps=3
        )
        for step, want in ((5, first), (6, second)):  # the reference's switch, the same step
            _close(reference(meta, eps, step=step)[1]["params"], want)


def test_fit_hands_the_training_step_to_the_learner():
    """``fit`` passes ``step=``: training with annealing equals a loop that passes it by hand."""
    with jax.enable_x64(True):
        apply_fn, init_fn = _net()
        learner = mamlpp(
            apply_fn, init_fn, inner_lr=LR, inner_steps=2, first_order_epochs=1, epoch_steps=2
        )
        data = tiny_data(classes=6, examples=6, size=SIZE, dtype=jnp.float64)
        sampler = fewshot_sampler(WAYS, 2, 2)
        opt = optax.sgd(0.1)
        state = init_state(learner, opt, jax.random.PRNGKey(0))
        manual = state
        for i in range(3):
            key, k_tasks = jax.random.split(manual.key)
            eps = sampler.sample_batch(k_tasks, data, 2)
            g, _ = learner.meta_grad(manual.params, eps, step=i)
            u, o = opt.update(g, manual.opt_state, manual.params)
            manual = manual._replace(
                step=manual.step + 1,
                params=optax.apply_updates(manual.params, u),
                opt_state=o,
                key=key,
            )
        trained = fit(
            learner,
            sampler,
            opt,
            steps=3,
            meta_batch=2,
            state=state,
            data=data,
            chunk=3,
            progress=False,
        )
        _close(manual.params, trained.params)


# --- per-step batch norm and learned per-layer, per-step rates ----------------------------


def _perturbed(meta, seed=5):
    """Distinct per-step copies and rates, so that a wrong slot or rate shows."""
    leaves, tree = jax.tree.flatten(meta)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    leaves = [
        x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree.unflatten(tree, leaves)


def test_per_step_batch_norm_and_lslr_match_a_hand_unrolled_reference():
    w, k_steps = (0.1, 0.3, 0.6), 3
    with jax.enable_x64(True):
        apply_fn, init_fn = _net()
        learner = mamlpp(
            apply_fn,
            init_fn,
            inner_lr=LR,
            inner_steps=k_steps,
            per_step_bn=True,
            lslr=True,
            msl_weights=w,
        )
        meta = learner.init(jax.random.PRNGKey(0))
        # the layout: K + 1 copies of every normalization parameter, K rates per array
        for path, leaf in jax.tree_util.tree_flatten_with_path(meta["params"])[0]:
            assert leaf.shape[0] == k_steps + 1 if is_norm_param(path) else leaf.ndim <= 2
        assert all(r.shape == (k_steps,) for r in jax.tree.leaves(meta["lr"]))
        meta = _perturbed(meta)
        eps = _episodes()
        got, metrics = learner.meta_grad(meta, eps, step=0)
        reference = refs.mamlpp_reference(
            apply_fn, inner_lr=LR, inner_steps=k_steps, per_step_bn=True, lslr=True, msl_weights=w
        )
        loss, want = reference(meta, eps, step=0)
        _close(want["params"], got["params"])
        # the rates of arrays the inner loop adapts get gradients (a bias right before batch
        # norm has none to give: the normalization removes it); the normalization ones none
        paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(meta["params"])[0]]
        grads = jax.tree.leaves(got["lr"])
        for path, g, g_ref in zip(paths, grads, jax.tree.leaves(want["lr"]), strict=True):
            np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-9, atol=1e-14)
            if is_norm_param(path):
                np.testing.assert_array_equal(np.asarray(g), 0.0)
            elif "kernel" in jax.tree_util.keystr(path):
                assert float(jnp.abs(g).min()) > 1e-8, path
        # the logged loss is the query loss after the last step (comparable with MAML's)
        np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-10)


def test_per_step_batch_norm_copies_get_gradients_only_from_their_own_step():
    """First order, last step's loss only: the support passes' copies (steps 0..K-1) get no
    gradient, the query's copy (step K) does; at second order they all do. Both orders
    equal the reference's (per-step batch norm without LSLR: one rate α)."""
    k_steps = 2
    with jax.enable_x64(True):
        apply_fn, init_fn = _net()
        kw = dict(inner_lr=LR, inner_steps=k_steps, per_step_bn=True)
        eps = _episodes()
        for first_order in (True, False):
            learner = mamlpp(apply_fn, init_fn, first_order=first_order, **kw)
            meta = _perturbed(learner.init(jax.random.PRNGKey(0)))
            g = learner.meta_grad(meta, eps)[0]["params"]
            reference = refs.mamlpp_reference(apply_fn, first_order=first_order, **kw)
            _close(reference(meta, eps)[1]["params"], g)
            for path, leaf in jax.tree_util.tree_flatten_with_path(g)[0]:
                if not is_norm_param(path):
                    continue
                per_copy = [float(jnp.abs(leaf[k]).max()) for k in range(k_steps + 1)]
                assert per_copy[-1] > 1e-8, path
                if first_order:
                    assert per_copy[:-1] == [0.0] * k_steps, path
                else:
                    assert min(per_copy) > 1e-10, path


def test_lslr_with_equal_frozen_rates_is_maml():
    with jax.enable_x64(True):
        apply_fn, init_fn = _net()
        learner = mamlpp(apply_fn, init_fn, inner_lr=LR, inner_steps=2, lslr=True)
        meta = learner.init(jax.random.PRNGKey(0))
        assert all(np.all(np.asarray(r) == LR) for r in jax.tree.leaves(meta["lr"]))
        eps = _episodes()
        g, m = learner.meta_grad(meta, eps)
        g_ref, m_ref = maml(apply_fn, init_fn, inner_lr=LR, inner_steps=2).meta_grad(
            meta["params"], eps
        )
        _close(g_ref, g["params"])
        np.testing.assert_allclose(m["loss"], m_ref["loss"], rtol=1e-12)
        # test time: more steps than trained reuse the last rate (and copy)
        sx, sy, qx = eps.support_x[0], eps.support_y[0], eps.query_x[0]
        a = learner.predict(learner.adapt(meta, sx, sy, steps=4), qx)
        b = maml(apply_fn, init_fn, inner_lr=LR).predict(
            maml(apply_fn, init_fn, inner_lr=LR).adapt(meta["params"], sx, sy, steps=4), qx
        )
        np.testing.assert_allclose(a, b, rtol=1e-10)


def test_batch_norm_statistics_are_each_tasks_own():
    """No statistics are shared across a meta-batch: one task's loss does not change when
    another task of the batch does (BNRS and "no shared running statistics" by construction)."""
    with jax.enable_x64(True):
        apply_fn, init_fn = _net()
        learner = mamlpp(
            apply_fn,
            init_fn,
            inner_lr=LR,
            inner_steps=2,
            per_step_bn=True,
            lslr=True,
            multi_step_loss=True,
        )
        meta = learner.init(jax.random.PRNGKey(0))
        a, b = _episodes(n=3, seed=1), _episodes(n=3, seed=2)
        mixed = jax.tree.map(lambda x, y: x.at[2].set(y[2]), a, b)
        loss = jax.vmap(lambda e: learner.outer_loss(meta, e, step=0)[0])
        la, lm = loss(a), loss(mixed)
        np.testing.assert_array_equal(la[:2], lm[:2])
        assert float(jnp.abs(la[2] - lm[2])) > 1e-6


# --- the outer schedule, the configuration and bad input ----------------------------------


def test_cosine_outer_learning_rate_is_the_closed_form():
    steps, lr, low = 40, 1e-3, 1e-5
    config = FewShotConfig(algo="maml++", steps=steps, meta_lr_schedule="cosine", min_meta_lr=low)
    opt = outer_optimizer(config)
    params = {"w": jnp.zeros(())}
    state = opt.init(params)
    for t in range(steps + 3):
        u, state = opt.update({"w": jnp.ones(())}, state, params)  # Adam: |update| = lr_t
        want = low + (lr - low) * (1 + math.cos(math.pi * min(t, steps) / steps)) / 2
        np.testing.assert_allclose(-float(u["w"]), want, rtol=1e-4)  # float32 schedule


def test_bad_options_are_refused_with_a_clear_error():
    apply_fn, init_fn = _net()
    with pytest.raises(ValueError, match="inner_steps >= 1"):
        mamlpp(apply_fn, init_fn, inner_lr=LR, inner_steps=0, lslr=True)
    with pytest.raises(ValueError, match="sum to one"):
        mamlpp(apply_fn, init_fn, inner_lr=LR, inner_steps=2, msl_weights=(0.5, 0.6))
    with pytest.raises(ValueError, match="one weight per inner step"):
        mamlpp(apply_fn, init_fn, inner_lr=LR, inner_steps=3, msl_weights=(0.5, 0.5))
    with pytest.raises(ValueError, match=">= 0"):
        mamlpp(apply_fn, init_fn, inner_lr=LR, inner_steps=2, msl_weights=(1.5, -0.5))
    mlp_apply, mlp_init = model(lambda r: __import__("mamlx").MLP((4, 5, 3), rngs=r))
    with pytest.raises(ValueError, match="no normalization parameters"):
        mamlpp(mlp_apply, mlp_init, inner_lr=LR, per_step_bn=True).init(jax.random.PRNGKey(0))
    from mamlx.experiments import build_learner

    for name, value in (("msl_epochs", 11), ("first_order_epochs", 3)):
        config = FewShotConfig(algo="maml++", steps=1000, epoch_steps=100, **{name: value})
        if name == "first_order_epochs":
            config = dataclasses.replace(config, first_order_epochs=11)
        with pytest.raises(ValueError, match="longer than training"):
            build_learner(config)
