"""iMAML's implicit gradient flows through ``jax.grad`` (issue 18).

The proximal inner solve is a ``jax.custom_vjp`` whose backward pass is the
conjugate-gradient solve of (I + H/λ) φ̄ = θ̄, so ``jax.grad`` of the task-mean
``outer_loss`` is ``meta_grad`` and both are the implicit-function-theorem gradient.
"""

import jax
import jax.numpy as jnp
import numpy as np

from mamlx import Episode, imaml

LAM, N, D, TASKS = 2.0, 8, 4, 3


def _linear(theta, x):
    return x @ theta


def _quadratic_tasks(seed=0):
    rng = np.random.default_rng(seed)
    xs, xq = rng.normal(size=(TASKS, N, D)), rng.normal(size=(TASKS, N, D))
    ys, yq = rng.normal(size=(TASKS, N)), rng.normal(size=(TASKS, N))
    phi = jnp.asarray(rng.normal(size=D))
    return phi, Episode(*map(jnp.asarray, (xs, ys, xq, yq)))


def _exact_theta(phi, xs, ys):
    """argmin_θ mean((xs θ − ys)²) + λ/2 ‖θ − φ‖², differentiable in all arguments."""
    h = 2 / N * xs.T @ xs
    return jnp.linalg.solve(h + LAM * jnp.eye(D), 2 / N * xs.T @ ys + LAM * phi)


def _learner(task_map="vmap"):
    # 2000 SGD steps solve the strongly convex inner problem to float64 precision;
    # D conjugate-gradient steps solve the D x D system exactly
    return imaml(
        _linear, None, inner_lr=0.05, inner_steps=2000, lam=LAM, cg_steps=D, task_map=task_map
    )


def test_grad_of_mean_outer_loss_equals_meta_grad_and_the_closed_form():
    # (meta_grad with task_map="map" against the closed form: tests/test_imaml.py)
    with jax.enable_x64(True):
        phi, eps = _quadratic_tasks()
        learner = _learner()

        def mean_outer_loss(p):
            return jnp.mean(jax.vmap(lambda ep: learner.outer_loss(p, ep)[0])(eps))

        g_grad = jax.jit(jax.grad(mean_outer_loss))(phi)
        g_meta, metrics = jax.jit(learner.meta_grad)(phi, eps)
        assert float(jnp.linalg.norm(g_grad)) > 1e-2  # not the old silent zero
        np.testing.assert_allclose(g_grad, g_meta, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(metrics["loss"], mean_outer_loss(phi), rtol=1e-10)

        # the implicit gradient (I + H_s/λ)^{-1} ∇L_q(θ*) per task, averaged
        want = []
        for t in range(TASKS):
            xs, ys = np.asarray(eps.support_x[t]), np.asarray(eps.support_y[t])
            xq, yq = np.asarray(eps.query_x[t]), np.asarray(eps.query_y[t])
            h = 2 / N * xs.T @ xs
            theta = np.asarray(_exact_theta(phi, xs, ys))
            g_query = 2 / N * xq.T @ (xq @ theta - yq)
            want.append(np.linalg.solve(np.eye(D) + h / LAM, g_query))
        np.testing.assert_allclose(g_grad, np.mean(want, axis=0), rtol=1e-8, atol=1e-10)
        # the tasks differ, so a sum or a single task would not pass
        assert np.max(np.abs(want[0] - want[1])) > 1e-2


def test_support_data_gradient_matches_differentiating_the_exact_solution():
    """The backward pass also gives d outer_loss / d(support_x, support_y)."""
    with jax.enable_x64(True):
        phi, eps = _quadratic_tasks(1)
        ep = jax.tree.map(lambda a: a[0], eps)
        learner = _learner()

        def via_learner(p, xs, ys):
            return learner.outer_loss(p, ep._replace(support_x=xs, support_y=ys))[0]

        def exact(p, xs, ys):
            return jnp.mean((ep.query_x @ _exact_theta(p, xs, ys) - ep.query_y) ** 2)

        args = (phi, ep.support_x, ep.support_y)
        got = jax.jit(jax.grad(via_learner, argnums=(0, 1, 2)))(*args)
        want = jax.grad(exact, argnums=(0, 1, 2))(*args)
        for g, w in zip(got, want, strict=True):
            assert float(jnp.max(jnp.abs(w))) > 1e-3
            np.testing.assert_allclose(g, w, rtol=1e-8, atol=1e-10)


def test_integer_labels_and_adapt_are_differentiable():
    """Classification (integer labels get a float0 cotangent); ``jax.grad`` through
    ``learner.adapt`` itself is the implicit vector-Jacobian product."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        ways, shots, dim = 3, 4, 5
        w = jnp.asarray(rng.normal(size=(dim, ways)) * 0.1)
        ep = Episode(
            jnp.asarray(rng.normal(size=(ways * shots, dim))),
            jnp.asarray(np.repeat(np.arange(ways), shots)),
            jnp.asarray(rng.normal(size=(ways * shots, dim))),
            jnp.asarray(np.repeat(np.arange(ways), shots)),
        )
        learner = imaml(_linear, None, inner_lr=0.5, inner_steps=100, lam=1.0, cg_steps=15)
        # vjp of adapt with cotangent v is (I + H/λ)^{-1} v (H of the support loss at θ*)
        v = jnp.asarray(rng.normal(size=w.shape))
        adapt = jax.jit(lambda p: learner.adapt(p, ep.support_x, ep.support_y))
        theta, pullback = jax.vjp(adapt, w)
        hess = jax.hessian(
            lambda t: jnp.mean(
                -jax.nn.log_softmax(ep.support_x @ t)[jnp.arange(ways * shots), ep.support_y]
            )
        )(theta).reshape(dim * ways, dim * ways)
        want = np.linalg.solve(np.eye(dim * ways) + hess, v.ravel()).reshape(w.shape)
        np.testing.assert_allclose(pullback(v)[0], want, rtol=1e-6, atol=1e-9)
