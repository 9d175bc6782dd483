"""Conformance checks every meta-learner passes (used by the test suite, handy for new learners).

``check_meta_learner`` verifies the shared contract of :class:`~mamlx.algorithms.MetaLearner`:
the meta-gradient jits and vmaps over tasks, losses are finite, results are
deterministic for a key, and (optionally, on a tiny float64 problem) the
meta-gradient matches central finite differences.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from mamlx.algorithms.base import MetaLearner
from mamlx.episodes import Episode


def _allclose_tree(a, b, **kw) -> bool:
    return all(
        np.allclose(np.asarray(x), np.asarray(y), **kw)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def check_meta_learner(
    learner: MetaLearner,
    sampler: Any,
    data: Any = None,
    *,
    num_tasks: int = 3,
    seed: int = 0,
    check_fd: bool = False,
    fd_eps: float = 1e-4,
    fd_rtol: float = 1e-4,
    fd_directions: int = 3,
) -> None:
    """Assert the meta-learner contract; raises ``AssertionError`` naming what failed.

    Args:
      learner: the learner to check.
      sampler: task sampler with ``sample(key, data)`` and ``sample_batch``.
      data: dataset array for the sampler.
      num_tasks: tasks in the test batch.
      seed: PRNG seed.
      check_fd: compare directional derivatives of the batch loss with central
        finite differences; call it inside ``jax.enable_x64(True)`` with float64
        params and data. Skipped for learners whose ``meta_grad`` is not a
        gradient (e.g. Reptile), which should pass ``check_fd=False``.
      fd_eps: finite-difference step.
      fd_rtol: relative tolerance of the finite-difference check.
      fd_directions: number of random directions checked.
    """
    key = jax.random.PRNGKey(seed)
    k_init, k_tasks, k_dir = jax.random.split(key, 3)
    params = learner.init(k_init)
    episodes = sampler.sample_batch(k_tasks, data, num_tasks)
    assert isinstance(episodes, Episode), "sampler.sample_batch must return an Episode"

    # jit + finite + deterministic
    meta_grad = jax.jit(learner.meta_grad)
    g1, m1 = meta_grad(params, episodes)
    g2, m2 = meta_grad(params, episodes)
    assert np.isfinite(float(m1["loss"])), f"non-finite meta-loss {m1['loss']}"
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(g1)), "non-finite grads"
    assert _allclose_tree(g1, g2, rtol=0, atol=0), "meta_grad is not deterministic"
    assert jax.tree.structure(g1) == jax.tree.structure(params), "grads must mirror params"

    # vmap over tasks: per-task outer losses equal one-by-one evaluation
    losses, _ = jax.jit(jax.vmap(learner.outer_loss, (None, 0)))(params, episodes)
    for i in range(num_tasks):
        task = jax.tree.map(lambda a, i=i: a[i], episodes)
        li, _ = jax.jit(learner.outer_loss)(params, task)
        np.testing.assert_allclose(losses[i], li, rtol=1e-4, atol=1e-5, err_msg="vmap != per task")
    np.testing.assert_allclose(
        m1["loss"], jnp.mean(losses), rtol=1e-4, atol=1e-6, err_msg="meta-loss is not the task mean"
    )

    # adapt + predict produce outputs for the query set
    task0 = jax.tree.map(lambda a: a[0], episodes)
    state = jax.jit(learner.adapt)(params, task0.support_x, task0.support_y)
    out = learner.predict(state, task0.query_x)
    assert out.shape[0] == task0.query_x.shape[0], "predict must return one output per query"

    if check_fd:

        def batch_loss(p):
            return jnp.mean(jax.vmap(learner.outer_loss, (None, 0))(p, episodes)[0])

        flat, unravel = jax.flatten_util.ravel_pytree(params)
        gflat = jax.flatten_util.ravel_pytree(g1)[0]
        for d in range(fd_directions):
            v = jax.random.normal(jax.random.fold_in(k_dir, d), flat.shape, flat.dtype)
            v = v / jnp.linalg.norm(v)
            fd = batch_loss(unravel(flat + fd_eps * v)) - batch_loss(unravel(flat - fd_eps * v))
            fd = fd / (2 * fd_eps)
            np.testing.assert_allclose(
                jnp.vdot(gflat, v),
                fd,
                rtol=fd_rtol,
                atol=1e-7,
                err_msg="meta-gradient disagrees with finite differences",
            )
