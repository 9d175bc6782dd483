"""Implicit MAML: the CG meta-gradient equals the implicit-function closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mamlx import Episode, imaml
from mamlx.datasets import sinusoid_model
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


def _tanh_mlp(p, x):
    return jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def _tanh_mlp_problem(tasks=2, shots=6, hidden=4):
    rng = np.random.default_rng(3)
    params = {
        "w1": jnp.asarray(rng.normal(size=(1, hidden))),
        "b1": jnp.asarray(rng.normal(size=hidden) * 0.5),
        "w2": jnp.asarray(rng.normal(size=(hidden, 1)) * 0.5),
        "b2": jnp.asarray(rng.normal(size=1) * 0.1),
    }
    x = rng.uniform(-2, 2, size=(tasks, 2, shots, 1))
    amp, phase = rng.uniform(0.5, 2, size=(tasks, 1, 1, 1)), rng.uniform(0, 3, (tasks, 1, 1, 1))
    y = amp * np.sin(x + phase)
    eps = Episode(*map(jnp.asarray, (x[:, 0], y[:, 0], x[:, 1], y[:, 1])))
    return params, eps


def test_imaml_gradient_matches_exact_implicit_gradient_on_a_nonlinear_mlp():
    """Hessian at θ* (not φ), mean (not sum) over tasks, on a non-quadratic problem.

    Reference per task: θ* from Newton's method on the proximal problem, then
    (I + H(θ*)/λ)^{-1} ∇L_query(θ*) with H from ``jax.hessian``; averaged over tasks.
    """
    from jax.flatten_util import ravel_pytree

    with jax.enable_x64(True):
        lam, tasks = 2.0, 2
        params, eps = _tanh_mlp_problem(tasks)
        flat, unravel = ravel_pytree(params)
        n = flat.size
        loss = lambda f, x, y: jnp.mean((_tanh_mlp(unravel(f), x) - y) ** 2)

        @jax.jit
        def reference(ep):
            prox_grad = lambda t: jax.grad(loss)(t, ep.support_x, ep.support_y) + lam * (t - flat)

            def newton(t, _):  # on L_support(θ) + λ/2 ‖θ − φ‖²
                h = jax.hessian(loss)(t, ep.support_x, ep.support_y) + lam * jnp.eye(n)
                return t - jnp.linalg.solve(h, prox_grad(t)), None

            theta = jax.lax.scan(newton, flat, None, length=30)[0]
            h = jax.hessian(loss)(theta, ep.support_x, ep.support_y)
            g_query = jax.grad(loss)(theta, ep.query_x, ep.query_y)
            return jnp.linalg.solve(jnp.eye(n) + h / lam, g_query), prox_grad(theta)

        refs, residuals = jax.vmap(reference)(eps)
        assert float(jnp.max(jnp.abs(residuals))) < 1e-12, "reference inner problem not solved"
        want = jnp.mean(refs, axis=0)
        # the tasks differ, so a sum over tasks or a one-task check would show
        assert float(jnp.max(jnp.abs(refs[0] - refs[1]))) > 1e-2

        for task_map in ("vmap", "map"):
            learner = imaml(
                _tanh_mlp,
                lambda k: params,
                inner_lr=0.1,
                inner_steps=400,
                lam=lam,
                cg_steps=3 * n,
                task_map=task_map,
            )
            got, metrics = jax.jit(learner.meta_grad)(params, eps)
            np.testing.assert_allclose(ravel_pytree(got)[0], want, rtol=1e-7, atol=1e-9)
            assert np.isfinite(metrics["loss"])


def test_grad_of_outer_loss_is_the_implicit_meta_gradient():
    """Issue 18: ``jax.grad(outer_loss)`` was exactly zero; now it is ``meta_grad``.

    (Replaces the test of the old contract, "outer_loss is for metrics only";
    the full checks are in tests/test_imaml_vjp.py.)
    """
    params, eps = _tanh_mlp_problem(1)
    learner = imaml(_tanh_mlp, lambda k: params, inner_lr=0.1, inner_steps=20, lam=2.0)
    ep = jax.tree.map(lambda a: a[0], eps)
    g_outer = jax.jit(jax.grad(lambda p: learner.outer_loss(p, ep)[0]))(params)
    g_meta, _ = jax.jit(learner.meta_grad)(params, eps)
    assert max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(g_meta)) > 1e-3
    for a, b in zip(jax.tree.leaves(g_outer), jax.tree.leaves(g_meta), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    for doc in (imaml.__doc__, learner.outer_loss.__doc__):
        assert "meta_grad" in doc and "jax.grad" in doc


def test_bad_arguments_raise_clear_errors():
    apply_fn, init_fn = sinusoid_model((4,))
    with pytest.raises(ValueError, match="cg_steps must be >= 1.*got 0"):
        imaml(apply_fn, init_fn, inner_lr=0.1, cg_steps=0)
    for lam in (float("inf"), float("nan"), 0.0, -1.0, True, "1"):
        with pytest.raises(ValueError, match=f"lam must be .*{lam!r}"):
            imaml(apply_fn, init_fn, inner_lr=0.1, lam=lam)
    for lr in (float("inf"), float("nan"), True, 0):
        with pytest.raises(ValueError, match=f"inner_lr.*{lr!r}"):
            imaml(apply_fn, init_fn, inner_lr=lr)
    imaml(apply_fn, init_fn, inner_lr=np.float32(0.1), lam=np.float32(1.0), cg_steps=1)
