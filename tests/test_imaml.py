"""Implicit MAML: the CG meta-gradient equals the implicit-function closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mamlx import Episode
from mamlx.algorithms import imaml
from mamlx.experiments import sinusoid_model
from mamlx.tasks import sinusoid
from mamlx.testing import check_meta_learner


@pytest.mark.parametrize("task_map", ["vmap", "map"])
def test_imaml_gradient_matches_closed_form_on_a_quadratic(task_map):
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        n, d, lam = 8, 4, 2.0
        xs, xq = rng.normal(size=(n, d)), rng.normal(size=(n, d))
        ys, yq = rng.normal(size=n), rng.normal(size=n)
        phi = rng.normal(size=d)
        ep = Episode(*map(jnp.asarray, (xs, ys, xq, yq)))
        learner = imaml(
            lambda t, x: x @ t,
            lambda k: jnp.asarray(phi),
            inner_lr=0.05,
            inner_steps=2000,
            lam=lam,
            cg_steps=50,
            task_map=task_map,
        )
        g, _ = learner.meta_grad(jnp.asarray(phi), jax.tree.map(lambda a: a[None], ep))
        # closed form: θ* = (H + λI)^{-1}(b + λφ) with H = 2/n XᵀX, b = 2/n Xᵀy
        h = 2 / n * xs.T @ xs
        theta = np.linalg.solve(h + lam * np.eye(d), 2 / n * xs.T @ ys + lam * phi)
        g_query = 2 / n * xq.T @ (xq @ theta - yq)
        expected = np.linalg.solve(np.eye(d) + h / lam, g_query)
        np.testing.assert_allclose(g, expected, rtol=1e-6, atol=1e-8)
        # and equals differentiating through the exact inner solution
        exact = jax.grad(
            lambda p: jnp.mean(
                (xq @ jnp.linalg.solve(h + lam * jnp.eye(d), 2 / n * xs.T @ ys + lam * p) - yq) ** 2
            )
        )(jnp.asarray(phi))
        np.testing.assert_allclose(g, exact, rtol=1e-6, atol=1e-8)


def test_imaml_memory_does_not_grow_with_inner_steps():
    apply_fn, init_fn = sinusoid_model()
    eps = sinusoid(10).sample_batch(jax.random.PRNGKey(0), None, 4)
    params = init_fn(jax.random.PRNGKey(1))
    temp = {}
    for steps in (5, 50):
        learner = imaml(apply_fn, init_fn, inner_lr=0.01, inner_steps=steps)
        compiled = jax.jit(learner.meta_grad).lower(params, eps).compile()
        temp[steps] = compiled.memory_analysis().temp_size_in_bytes
    assert temp[50] <= temp[5] * 1.05 + 1024, temp


def test_imaml_conformance():
    learner = imaml(*sinusoid_model((16,)), inner_lr=0.01, inner_steps=5)
    check_meta_learner(learner, sinusoid(5))


def test_conjugate_gradient_solves_spd_systems_on_pytrees():
    from mamlx.algorithms.imaml import conjugate_gradient

    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        m = rng.normal(size=(5, 5))
        a = m @ m.T + 5 * np.eye(5)
        b = {"u": jnp.asarray(rng.normal(size=3)), "v": jnp.asarray(rng.normal(size=2))}
        flat = lambda t: jnp.concatenate([t["u"], t["v"]])
        matvec = lambda t: {"u": (a @ flat(t))[:3], "v": (a @ flat(t))[3:]}
        x = conjugate_gradient(matvec, b, 5)  # exact in n iterations for n = 5
        np.testing.assert_allclose(flat(x), np.linalg.solve(a, flat(b)), rtol=1e-8)
