"""Reptile as an optax transformation equals the Reptile meta-learner (issue 18).

``reptile_optimizer(inner_opt, k, ε)`` fed one task's support gradient per call in a
plain optax loop must give, every k calls, the same meta-parameters as
``reptile(..., inner_opt, inner_steps=k).meta_grad`` followed by ``optax.sgd(ε)``;
with ``task_axis=True`` (one fast copy per task) the same as a meta-batch of n tasks.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mamlx import Episode
from mamlx.algorithms.reptile import ReptileState, reptile, reptile_optimizer
from mamlx.losses import mse

K, META_STEPS, SHOTS, HIDDEN = 3, 4, 6, 8


def mlp(p, x):
    return jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def support_loss(p, x, y):
    return mse(mlp(p, x), y)


def problem(tasks, seed=0):
    """φ0 and META_STEPS batches of ``tasks`` sine tasks (support = query)."""
    rng = np.random.default_rng(seed)
    phi = {
        "w1": rng.normal(size=(1, HIDDEN)),
        "b1": rng.normal(size=HIDDEN) * 0.5,
        "w2": rng.normal(size=(HIDDEN, 1)) * 0.5,
        "b2": rng.normal(size=1) * 0.1,
    }
    x = rng.uniform(-3, 3, size=(META_STEPS, tasks, SHOTS, 1))
    amp = rng.uniform(0.5, 3, size=(META_STEPS, tasks, 1, 1))
    y = amp * np.sin(x + rng.uniform(0, np.pi, size=(META_STEPS, tasks, 1, 1)))
    x, y = jnp.asarray(x), jnp.asarray(y)
    return jax.tree.map(jnp.asarray, phi), Episode(x, y, x, y)


def learner_trajectory(phi, episodes, inner_opt, outer):
    """φ after each meta-step of ``reptile`` + ``outer`` (the reference)."""
    learner = reptile(mlp, None, inner_opt=inner_opt, inner_steps=K)

    @jax.jit
    def meta_step(phi, state, batch):
        grads, _ = learner.meta_grad(phi, batch)
        updates, state = outer.update(grads, state, phi)
        return optax.apply_updates(phi, updates), state

    state, out = outer.init(phi), []
    for m in range(META_STEPS):
        phi, state = meta_step(phi, state, jax.tree.map(lambda a: a[m], episodes))
        out.append(phi)
    return out


def transformation_trajectory(phi, episodes, tx, task_axis):
    """φ after each k-th call of ``tx`` in a plain optax loop, one call per inner step."""
    grad = jax.grad(support_loss)
    if task_axis:  # one fast copy of φ per task
        n = episodes.support_x.shape[1]
        params = jax.tree.map(lambda a: jnp.broadcast_to(a, (n, *a.shape)), phi)
        grad = jax.vmap(grad)
    else:
        params = phi

    @jax.jit
    def inner_step(params, state, x, y):
        updates, state = tx.update(grad(params, x, y), state, params)
        return optax.apply_updates(params, updates), state

    state, out = tx.init(params), []
    for m in range(META_STEPS):
        x, y = episodes.support_x[m], episodes.support_y[m]
        if not task_axis:
            x, y = x[0], y[0]
        for _ in range(K):
            params, state = inner_step(params, state, x, y)
        slow = optax.tree.get(state, "slow")  # found inside a chain's state too
        synced = jax.tree.map(lambda a: a[0], params) if task_axis else params
        assert_tree_close(synced, slow, rtol=1e-13, atol=1e-15)  # fast weights reset to φ
        out.append(slow)
    return out


def assert_tree_close(a, b, rtol=1e-11, atol=1e-13):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def assert_same_trajectory(got, want, phi0):
    for g, w in zip(got, want, strict=True):
        assert_tree_close(g, w)
    moved = optax.tree.norm(jax.tree.map(jnp.subtract, want[-1], phi0))
    assert float(moved) > 1e-2  # the comparison is not between two unmoved φ


INNER = {
    "sgd": lambda: 0.05,
    "adam_b1_0": lambda: optax.adam(0.02, b1=0.0),  # the paper's inner optimizer
}


@pytest.mark.parametrize("inner, tasks", [("sgd", 1), ("adam_b1_0", 1), ("adam_b1_0", 3)])
def test_transformation_equals_reptile_learner_with_sgd_outer_update(inner, tasks):
    """Meta-batch 1: the plain transformation. Meta-batch 3: ``task_axis=True``
    (one fast copy and one Adam state per task)."""
    with jax.enable_x64(True):
        phi, episodes = problem(tasks)
        eps = 0.5
        want = learner_trajectory(phi, episodes, INNER[inner](), optax.sgd(eps))
        tx = reptile_optimizer(INNER[inner](), K, eps, task_axis=tasks > 1)
        got = transformation_trajectory(phi, episodes, tx, task_axis=tasks > 1)
        assert_same_trajectory(got, want, phi)


def test_chained_clipping_and_any_outer_optimizer():
    """``optax.chain(clip, tx)`` clips each inner gradient: the learner with
    ``inner_opt=optax.chain(clip, optax.sgd(α))``. An optax ``outer_opt`` (here Adam)
    gets the pseudo-gradient φ − θ̃ as the learner's outer optimizer does."""
    with jax.enable_x64(True):
        phi, episodes = problem(1, seed=1)
        clip, alpha = 0.3, 0.1
        inner_opt = optax.chain(optax.clip_by_global_norm(clip), optax.sgd(alpha))
        want = learner_trajectory(phi, episodes, inner_opt, optax.adam(0.1))
        tx = optax.chain(
            optax.clip_by_global_norm(clip), reptile_optimizer(alpha, K, optax.adam(0.1))
        )
        got = transformation_trajectory(phi, episodes, tx, task_axis=False)
        assert_same_trajectory(got, want, phi)
        # clipping is active: the first inner gradient is longer than the clip norm
        x, y = episodes.support_x[0, 0], episodes.support_y[0, 0]
        assert float(optax.tree.norm(jax.grad(support_loss)(phi, x, y))) > 2 * clip


def test_state_extra_args_and_errors():
    tx = reptile_optimizer(optax.adam(0.1, b1=0.0), 2, 0.5)
    params = jnp.ones(3)
    state = tx.init(params)
    assert isinstance(state, ReptileState)
    for step in range(1, 4):
        # extra args (here ``value=``, as mamlx.inner passes the loss) are accepted
        _, state = tx.update(jnp.ones(3), state, params, value=jnp.float32(1.0))
        assert int(state.count) == step
        assert int(state.inner_state[0].count) == step % 2  # Adam re-initialised per task
    kept = reptile_optimizer(optax.adam(0.1, b1=0.0), 2, 0.5, reset_inner_state=False)
    state = kept.init(params)
    for _ in range(3):
        _, state = kept.update(jnp.ones(3), state, params)
    assert int(state.inner_state[0].count) == 3
    # a schedule for ε (the paper anneals it to 0) counts meta-steps, not inner steps
    eps = optax.linear_schedule(1.0, 0.0, 2)
    annealed = reptile_optimizer(0.1, 2, eps)
    state = annealed.init(params)
    for _ in range(6):
        updates, state = annealed.update(jnp.ones(3), state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(state.slow, 1 - 0.2 * (1.0 + 0.5), rtol=1e-6)  # ε: 1, ½, 0
    np.testing.assert_allclose(params, state.slow, rtol=1e-6)
    with pytest.raises(ValueError, match="needs params"):
        tx.update(jnp.ones(3), tx.init(params))
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="inner_steps"):
            reptile_optimizer(0.1, bad, 0.5)
    for bad in (0.0, float("nan"), True):
        with pytest.raises(ValueError, match="outer_opt"):
            reptile_optimizer(0.1, 2, bad)
