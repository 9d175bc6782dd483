"""The one inner loop (mamlx.inner.run) and its wrappers: adapt, unroll, meta_lstm_trajectory."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mamlx import inner
from mamlx.optimizers import meta_lstm_optimizer, meta_lstm_trajectory, unroll
from mamlx.optimizers.meta_lstm import gate_values, init_meta_lstm

A = np.array([1.0, 2.0, 0.5])  # support loss ½ Σ a_i (θ_i − b_i)², query loss ½ |θ − t|²
B = np.array([0.3, -1.0, 2.0])
T = np.array([1.0, 0.5, -0.5])
ALPHA, STEPS = 0.1, 3


def support(p, a, b):
    return 0.5 * jnp.sum(a * (p["w"] - b) ** 2)


def query(p):
    return 0.5 * jnp.sum((p["w"] - T) ** 2)


def sgd_by_hand(p, steps=STEPS):
    """A Python loop of SGD steps: params, losses before each step, query loss after each."""
    losses, after = [], []
    for _ in range(steps):
        losses.append(support(p, A, B))
        g = jax.grad(support)(p, A, B)
        p = {"w": p["w"] - ALPHA * g["w"]}
        after.append(query(p))
    return p, jnp.stack(losses), jnp.stack(after)


@pytest.mark.parametrize("remat, unroll_", [(False, 1), (True, True)])
def test_run_equals_a_python_loop_of_sgd_steps(remat, unroll_):
    with jax.enable_x64(True):
        p0 = {"w": jnp.zeros(3)}
        out = inner.run(
            support, p0, A, B, steps=STEPS, optimizer=ALPHA, remat=remat, unroll=unroll_,
            trace=lambda p, s: query(p),
        )  # fmt: skip
        want_p, want_losses, want_after = sgd_by_hand(p0)
        assert out.losses.dtype == jnp.float64 and out.losses.shape == (STEPS,)
        np.testing.assert_allclose(out.params["w"], want_p["w"], rtol=1e-13)
        # losses[k] is the loss at θ_k BEFORE step k; the trace hook sees θ_{k+1} AFTER it.
        np.testing.assert_allclose(out.losses, want_losses, rtol=1e-13)
        np.testing.assert_allclose(out.trace, want_after, rtol=1e-13)
        shifted = inner.run(
            support, p0, A, B, steps=STEPS, optimizer=ALPHA, trace=lambda p, s: support(p, A, B)
        )
        np.testing.assert_allclose(shifted.trace[:-1], shifted.losses[1:], rtol=1e-13)
        # The wrappers are the same scan: adapt returns losses before, unroll losses after.
        p, losses = inner.adapt(support, p0, A, B, steps=STEPS, optimizer=ALPHA)
        np.testing.assert_allclose(p["w"], want_p["w"], rtol=1e-13)
        np.testing.assert_allclose(losses, want_losses, rtol=1e-13)
        f = lambda q: support(q, A, B)
        opt = optax.sgd(ALPHA)
        p, _, after = unroll(opt, f, p0, opt.init(p0), STEPS)
        np.testing.assert_allclose(p["w"], want_p["w"], rtol=1e-13)
        np.testing.assert_allclose(after, [*want_losses[1:], f(want_p)], rtol=1e-13)


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_has_the_closed_form(first_order):
    """θ_K − b = (1 − αa)^K (θ_0 − b), so ∂L_q(θ_K)/∂θ_0 = (θ_K − t) ⊙ (1 − αa)^K exactly and
    (θ_K − t) to first order (the inner Jacobian replaced by the identity)."""
    with jax.enable_x64(True):
        theta0 = jnp.array([0.2, -0.4, 1.0])

        def outer(w):
            out = inner.run(
                support, {"w": w}, A, B, steps=STEPS, optimizer=ALPHA, first_order=first_order
            )
            return query(out.params)

        grad = jax.grad(outer)(theta0)
        theta_k = B + (1 - ALPHA * A) ** STEPS * (theta0 - B)
        want = (theta_k - T) * (1.0 if first_order else (1 - ALPHA * A) ** STEPS)
        np.testing.assert_allclose(grad, want, rtol=1e-12)
        # The legacy flags are its negation: adapt(first_order) and unroll(second_order).
        f = lambda w: query(
            inner.adapt(
                support, {"w": w}, A, B, steps=STEPS, optimizer=ALPHA, first_order=first_order
            )[0]
        )
        opt = optax.sgd(ALPHA)
        u = lambda w: query(
            unroll(opt, lambda q: support(q, A, B), {"w": w}, opt.init({"w": w}), STEPS,
                   second_order=not first_order)[0]
        )  # fmt: skip
        for g in (jax.grad(f)(theta0), jax.grad(u)(theta0)):
            np.testing.assert_allclose(g, want, rtol=1e-12)


def test_first_order_stops_only_what_the_update_reads():
    """With a learned rule, first order cuts ∂(loss, grad fed to the rule); the recorded
    losses and the traced params still carry the gradient w.r.t. the rule's parameters."""
    with jax.enable_x64(True):
        mp = init_meta_lstm(jax.random.key(0), hidden_size=3)
        mp["input_gate"]["b"] = jnp.asarray(-2.0)
        p0 = {"w": jnp.array([0.2, -0.4, 1.0])}

        def by_hand(m):
            opt = meta_lstm_optimizer(m)
            p, s, gates = p0, opt.init(p0), []
            for _ in range(2):
                loss, g = jax.lax.stop_gradient(jax.value_and_grad(support)(p, A, B))
                upd, s = opt.update(g, s, p, value=loss)
                p = optax.apply_updates(p, upd)
                gates.append(gate_values(s)["input"]["w"])
            return query(p), jnp.stack(gates)

        def library(m, **flag):  # the paper's default: first order
            p, tr = meta_lstm_trajectory(m, lambda q: support(q, A, B), p0, 2, **flag)
            return query(p), tr["input"]["w"]

        vg = lambda fn: jax.value_and_grad(fn, has_aux=True)(mp)
        ((v1, g1), d1), ((v2, g2), d2) = jax.jit(lambda: (vg(by_hand), vg(library)))()
        np.testing.assert_allclose(v1, v2, rtol=1e-13)
        np.testing.assert_allclose(g1, g2, rtol=1e-13)
        flat = lambda t: jax.flatten_util.ravel_pytree(t)[0]
        np.testing.assert_allclose(flat(d2), flat(d1), rtol=1e-10, atol=1e-14)
        assert float(jnp.linalg.norm(flat(d1))) > 0
        # The legacy second_order=True is first_order=False: the same program (traced, not
        # compiled, to keep this test fast), and not the default first-order one.
        grad = lambda **flag: jax.grad(lambda m: library(m, **flag), has_aux=True)
        program = lambda **flag: str(jax.make_jaxpr(grad(**flag))(mp))
        assert program(second_order=True) == program(first_order=False) != program()


def test_state_passed_in_zero_steps_and_conflicting_flags():
    p0 = {"w": jnp.zeros(3)}
    adam = optax.adam(0.1)
    s0 = adam.init(p0)
    once = inner.run(support, p0, A, B, steps=1, optimizer=adam, opt_state=s0)
    twice = inner.run(support, once.params, A, B, steps=1, optimizer=adam, opt_state=once.opt_state)
    both = inner.run(support, p0, A, B, steps=2, optimizer=adam)
    np.testing.assert_allclose(twice.params["w"], both.params["w"], rtol=1e-6)
    zero = inner.run(support, p0, A, B, steps=0, optimizer=adam, trace=lambda p, s: p)
    assert zero.params is p0 and zero.losses.shape == (0,) and zero.trace["w"].shape == (0, 3)
    with pytest.raises(ValueError, match="negation of first_order"):
        unroll(adam, lambda q: support(q, A, B), p0, s0, 2, True, first_order=True)
    with pytest.raises(ValueError, match="inner steps must be an integer"):
        inner.run(support, p0, A, B, steps=2.0, optimizer=0.1)


@pytest.mark.parametrize("first_order", [False, True])
def test_a_given_first_step_is_the_loop_that_computes_it(first_order):
    """``first=(L_0, g_0)`` from :func:`inner.first_steps` (tasks batched, θ_0 shared): the
    same params, losses, trace, optimizer state and gradients (with respect to θ_0, also
    through the given step 0 when second order) as the loop that evaluates step 0 itself;
    Adam checks that the state the given step leaves is the one the later steps start from."""
    with jax.enable_x64(True):
        bs = jnp.stack([B, B[::-1], 2 * B])  # three tasks, one θ_0
        theta0 = {"w": jnp.array([0.2, -0.4, 1.0])}
        opt = optax.adam(0.1)
        kw = dict(steps=STEPS, optimizer=opt, first_order=first_order, trace=lambda p, s: query(p))

        def outer(theta, b, first=None):
            out = inner.run(support, theta, A, b, first=first, **kw)
            return query(out.params) + jnp.sum(out.trace) + jnp.sum(out.losses), out

        def batched(theta):
            first = inner.first_steps(support, theta, jnp.broadcast_to(A, bs.shape), bs)
            return jax.vmap(lambda b, f: outer(theta, b, (f[0], f[1]))[0])(bs, first).sum()

        looped = lambda theta: sum(outer(theta, b)[0] for b in bs)
        np.testing.assert_allclose(batched(theta0), looped(theta0), rtol=1e-13)
        g_batched, g_looped = jax.grad(batched)(theta0), jax.grad(looped)(theta0)
        np.testing.assert_allclose(g_batched["w"], g_looped["w"], rtol=1e-12)
        first = jax.value_and_grad(support)(theta0, A, bs[1])
        _, given = outer(theta0, bs[1], first)
        _, computed = outer(theta0, bs[1])
        flat = lambda t: jax.flatten_util.ravel_pytree(t)[0]
        np.testing.assert_allclose(flat(given), flat(computed), rtol=1e-13)
        # A wrong step 0 is used as given: the argument is not ignored.
        wrong = (first[0], jax.tree.map(lambda g: g + 1.0, first[1]))
        assert not np.allclose(outer(theta0, bs[1], wrong)[1].params["w"], computed.params["w"])


def test_a_given_first_step_with_step_inputs_is_refused():
    first = jax.value_and_grad(support)({"w": jnp.zeros(3)}, A, B)
    with pytest.raises(ValueError, match="step_inputs"):
        inner.run(
            lambda p, x: support(p, A, x), {"w": jnp.zeros(3)}, steps=2, optimizer=ALPHA,
            step_inputs=jnp.stack([B, B]), first=first,
        )  # fmt: skip
