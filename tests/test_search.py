"""Tests for mamlx.search: searched update rules and activations, controller, REINFORCE."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from mamlx import search
from mamlx.search import (
    ACTIVATIONS,
    KNOWN_ACTIVATIONS,
    KNOWN_RULES,
    UPDATE_RULES,
    ChildConfig,
    activation,
    activation_formula,
    apply_rule,
    as_optax,
    encode,
    formula,
)

TINY = ChildConfig(hidden=(8,), steps=12, batch_size=8)


def _grads(key, steps):
    """Gradients that change sign from step to step, on a nested pytree."""
    ks = jax.random.split(jax.random.key(key), steps)
    return [
        {
            "w": jax.random.normal(k, (3, 4)),
            "b": [jax.random.normal(jax.random.fold_in(k, 1), (4,))],
        }
        for k in ks
    ]


def _run(opt, grads):
    """Updates and params after each step of ``opt`` on the given gradients (one scan)."""

    def step(carry, g):
        params, state = carry
        updates, state = opt.update(g, state, params)
        params = optax.apply_updates(params, updates)
        return (params, state), (updates, params)

    params = jax.tree.map(jnp.zeros_like, grads[0])
    stacked = jax.tree.map(lambda *g: jnp.stack(g), *grads)
    _, (updates, params) = jax.jit(lambda s, g: jax.lax.scan(step, s, g))(
        (params, opt.init(params)), stacked
    )
    return [
        jax.tree.map(lambda a, i=i: np.asarray(a[i]), (updates, params)) for i in range(len(grads))
    ]


def _random_codes(space, n, seed):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, v, n) for v in space.vocab_sizes], axis=1).astype(np.int32)


# ------------------------------------------------------------------- update rules as codes


@pytest.mark.parametrize("lr", [0.1, 0.003])
def test_code_for_lambda_g_is_optax_sgd_step_for_step(lr):
    code = KNOWN_RULES["sgd"]
    assert formula(code) == "Δw = λ·g"
    grads = _grads(0, 6)
    for (u, p), (u_ref, p_ref) in zip(
        _run(as_optax(code, lr), grads), _run(optax.sgd(lr), grads), strict=True
    ):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=0), u, u_ref)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=0), p, p_ref)


def test_powersign_and_addsign_codes_equal_their_closed_forms():
    lr, beta = 0.05, 0.9
    assert formula(KNOWN_RULES["powersign"]) == "Δw = λ·exp(sign(g)·sign(m̂))·g"
    assert formula(KNOWN_RULES["addsign"]) == "Δw = λ·(1 + sign(g)·sign(m̂))·g"
    grads = _grads(1, 8)
    closed = {
        "powersign": lambda g, m: np.exp(np.sign(g) * np.sign(m)) * g,
        "addsign": lambda g, m: (1 + np.sign(g) * np.sign(m)) * g,
    }
    for name, rule in closed.items():
        out = _run(as_optax(KNOWN_RULES[name], lr), grads)
        m = jax.tree.map(np.zeros_like, grads[0])  # hand-written running mean of g
        agree = 0
        for g, (updates, _) in zip(grads, out, strict=True):
            m = jax.tree.map(lambda m, g: beta * m + (1 - beta) * np.asarray(g), m, g)
            want = jax.tree.map(lambda g, m: -lr * rule(np.asarray(g), m), g, m)
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), updates, want)
            agree += sum(
                int(np.sum(np.sign(a) == np.sign(b)))
                for a, b in zip(*map(jax.tree.leaves, (g, m)), strict=True)
            )
        assert 0 < agree < 8 * 16, "the gradients should agree with m̂ in sign only sometimes"


def test_rules_read_bias_corrected_running_means():
    g = jnp.array([0.5, -2.0, 0.0])
    # Adam's direction without ε, first step: m̂ = g, v̂ = g², so m̂/√v̂ = sign(g) (0/0 = 0).
    (updates, _), *_ = _run(as_optax(KNOWN_RULES["adam"], 1.0), [g])
    np.testing.assert_allclose(updates, [-1.0, 1.0, 0.0], rtol=1e-5)  # float32 1 - 0.999
    momentum = _run(as_optax(KNOWN_RULES["momentum"], 1.0), [g, 2 * g])
    m2 = (0.9 * 0.1 * g + 0.1 * 2 * g) / (1 - 0.9**2)
    np.testing.assert_allclose(momentum[1][0], -m2, rtol=1e-6)


def test_division_by_zero_and_overflow_are_not_finite_but_zero_over_zero_is_zero():
    g = jnp.array([1.0, 0.0, -3.0])
    div0 = encode(
        UPDATE_RULES,
        ["g", "g", "identity", "identity", "sub"] + ["g", "h", "identity", "identity", "div"],
    )
    out = apply_rule(jnp.asarray(div0), g, g, g * g, 0 * g)
    assert np.isinf(out[0]) and out[1] == 0 and np.isinf(out[2])
    assert formula(div0) == "Δw = λ·g/(g − g)"


# ------------------------------------------------------------------ activations as codes


@jax.jit
def _values_and_grads(codes, x):
    """``f(x)`` and ``f'(x)`` of each activation code, elementwise (one ``vmap``)."""

    def one(code):
        f = activation(code)
        return f(x), jax.grad(lambda x: jnp.sum(f(x)))(x)

    return jax.vmap(one)(codes)


def test_code_for_x_sigmoid_x_is_swish():
    code = encode(ACTIVATIONS, ["x", "sigmoid", "mul", "x", "x", "keep_left"])
    np.testing.assert_array_equal(code, KNOWN_ACTIVATIONS["swish"])
    assert activation_formula(code) == "f(x) = x·σ(x)"
    x = jnp.linspace(-6.0, 6.0, 101)
    other = encode(ACTIVATIONS, ["x", "x", "sigmoid_mul", "x", "x", "keep_left"])  # σ(x₁)·x₂
    codes = np.stack([code, other, KNOWN_ACTIVATIONS["relu"]])
    f, df = _values_and_grads(codes, x)
    for i, ref in enumerate([jax.nn.swish, jax.nn.swish, jax.nn.relu]):
        np.testing.assert_allclose(f[i], ref(x), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(df[i], jax.vmap(jax.grad(ref))(x), rtol=1e-5, atol=1e-6)


def test_two_unit_activation_and_its_formula():
    code = encode(ACTIVATIONS, ["x", "x^2", "add", "tanh", "sin", "mul"])
    assert activation_formula(code) == "f(x) = tanh(x + x²)·sin(x)"
    x = jnp.linspace(-2.0, 2.0, 101)
    f, _ = _values_and_grads(code[None], x)
    np.testing.assert_allclose(f[0], jnp.tanh(x + x**2) * jnp.sin(x), rtol=1e-6, atol=1e-7)


def test_activation_gradients_stay_finite_where_unchosen_branches_overflow():
    x = jnp.linspace(-200.0, 200.0, 101)  # exp(200), x³ overflow in the branches not chosen
    names = list(KNOWN_ACTIVATIONS)
    _, df = _values_and_grads(np.stack([KNOWN_ACTIVATIONS[n] for n in names]), x)
    for name, d in zip(names, df, strict=True):
        assert np.all(np.isfinite(d)), name


# --------------------------------------------------------------- batches under vmap


def test_a_batch_of_codes_under_vmap_equals_each_alone():
    codes = _random_codes(UPDATE_RULES, 16, seed=0)
    g = jax.random.normal(jax.random.key(0), (4, 5))
    m, v, e = 0.3 * g + 0.1, g * g + 0.2, 0.01 * jnp.cos(g)
    rule = jax.jit(apply_rule)
    batched = jax.jit(jax.vmap(apply_rule, (0, None, None, None, None)))(codes, g, m, v, e)
    for c, b in zip(codes, batched, strict=True):
        np.testing.assert_allclose(b, rule(c, g, m, v, e), rtol=1e-5, equal_nan=True)

    x = jnp.linspace(-1.5, 1.5, 101)
    acodes = _random_codes(ACTIVATIONS, 16, seed=1)
    ys, dys = _values_and_grads(acodes, x)
    for c, y, dy in zip(acodes, ys, dys, strict=True):
        y1, dy1 = (a[0] for a in _values_and_grads(c[None], x))
        np.testing.assert_allclose(y, y1, rtol=1e-5, atol=1e-6, equal_nan=True)
        np.testing.assert_allclose(dy, dy1, rtol=1e-5, atol=1e-6, equal_nan=True)


@pytest.fixture(scope="module")
def task():
    return search.synthetic_task(jax.random.key(3), num_classes=4, dim=8)


INVALID = {
    "division by zero": ["g", "g", "identity", "identity", "sub", "g", "h", "identity", "identity", "div"],
    "overflow": ["1", "g^2", "identity", "identity", "div", "h", "g", "exp", "identity", "keep_left"],
    "NaN": ["1", "g^2", "identity", "identity", "div", "h", "h", "exp", "exp", "sub"],
}  # fmt: skip


def test_a_batch_of_child_runs_equals_each_run_alone_and_invalid_ones_get_the_worst(task):
    invalid = [encode(UPDATE_RULES, t) for t in INVALID.values()]
    codes = np.stack([KNOWN_RULES["sgd"], KNOWN_RULES["powersign"], *invalid])
    key = jax.random.key(4)
    rewards = search.rule_rewards(4, TINY, learning_rates=(0.1,), worst_reward=-1.0)
    batch = np.asarray(jax.jit(rewards)(codes, key, task))
    np.testing.assert_array_equal(batch[2:], -1.0)  # division by zero, overflow, NaN
    assert batch[0] > 0.4 and batch[1] > 0.4  # λ·g and PowerSign learn the blobs

    @jax.jit
    def alone(key, task):  # PowerSign by itself: a concrete code, no vmap
        opt = as_optax(KNOWN_RULES["powersign"], 0.1)
        return search.train_child(task, opt, key, num_classes=4, config=TINY)

    run = alone(key, task)
    assert bool(run.valid) and float(run.val_accuracy) == batch[1]


def test_malformed_codes_raise_naming_the_bad_token():
    bad = KNOWN_RULES["sgd"].copy()
    bad[3] = 42
    with pytest.raises(ValueError, match=r"code\[3\] = 42 .*slot 'u2'.*0\.\.6"):
        as_optax(bad, 0.1)
    with pytest.raises(ValueError, match=r"code\[0\] = -1 .*slot 'op1'"):
        as_optax([-1, *KNOWN_RULES["sgd"][1:]], 0.1)
    with pytest.raises(ValueError, match=r"shape \(10,\)"):
        as_optax(KNOWN_RULES["sgd"][:7], 0.1)
    with pytest.raises(ValueError, match=r"code\[2\] = 1.5 is not an integer"):
        as_optax([0, 0, 1.5, 0, 4, 0, 6, 0, 0, 4], 0.1)
    with pytest.raises(ValueError, match=r"code\[5\] = 9 .*slot 'b2'"):
        activation([0, 0, 0, 0, 0, 9])
    with pytest.raises(ValueError, match=r"token 'cube' at position 0 .*slot 'u1'"):
        encode(ACTIVATIONS, ["cube", "x", "add", "x", "x", "keep_left"])
    with pytest.raises(ValueError, match=r"code\[1\] = 14 .*slot 'u2'"):
        activation_formula([0, 14, 0, 0, 0, 0])


# ------------------------------------------------------------------ controller, REINFORCE

# Two slots of unequal sizes (3 and 4 tokens); the best program is (2, 1).
BANDIT = search.SearchSpace("bandit", ("a", "b"), (("0", "1", "2"), ("0", "1", "2", "3")), str)
TABLE = jnp.array([[0.1, 0.3, 0.0, 0.2], [0.2, 0.0, 0.4, 0.1], [0.0, 1.0, 0.2, 0.3]])
EVERY = jnp.array(list(itertools.product(range(3), range(4))), jnp.int32)


def _bandit_reward(codes, key=None):
    return TABLE[codes[:, 0], codes[:, 1]]


def test_reinforce_gradient_matches_the_analytic_gradient_in_expectation():
    ctrl = search.controller(BANDIT, hidden=8)
    rl = search.reinforce(ctrl, entropy_weight=0.0)
    params = ctrl.init(jax.random.key(0))
    leaves, tree = jax.tree.flatten(params)
    noise = jax.random.split(jax.random.key(1), len(leaves))
    params = tree.unflatten(
        [p + 0.5 * jax.random.normal(k, p.shape) for p, k in zip(leaves, noise, strict=True)]
    )  # a policy far from uniform, with gradients through the LSTM
    flat = lambda tree: ravel_pytree(tree)[0]
    n, baseline = 20_000, 0.3

    @jax.jit
    def gradients(params, key):
        samples = ctrl.sample(params, key, n)

        def expected_reward(p):
            return jnp.sum(jnp.exp(ctrl.log_prob(p, EVERY)[0]) * _bandit_reward(EVERY))

        def estimate(code):  # REINFORCE's one-sample estimate of ∇J: minus the loss gradient
            g = jax.grad(rl.loss)(params, code[None], _bandit_reward(code[None]), baseline)
            return -flat(g)

        exact = flat(jax.grad(expected_reward)(params))
        per_code = jax.vmap(estimate)(EVERY)  # (R(c) − b)∇log π(c) for each of the 12 programs
        scored = ctrl.log_prob(params, samples.codes)
        return samples, scored, exact, per_code

    samples, scored, *grads = gradients(params, jax.random.key(2))
    exact, per_code = (np.asarray(a, np.float64) for a in grads)
    # the sampler's codes are programs of the grammar, scored as the sampler scored them
    codes = np.asarray(samples.codes)
    assert codes.dtype == np.int32 and codes.shape == (n, 2)
    assert codes[:, 0].max() == 2 and codes[:, 1].max() == 3 and codes.min() == 0
    np.testing.assert_allclose(scored[0], samples.log_prob, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scored[1], samples.entropy, rtol=1e-5, atol=1e-6)
    counts = np.bincount(codes[:, 0] * 4 + codes[:, 1], minlength=12)
    mean = counts @ per_code / n  # the mean of the n one-sample estimates (the batch's)
    # Unbiased: within 5 standard errors of the analytic gradient, coordinate by coordinate,
    # the standard error measured from the samples themselves.
    var = counts @ (per_code - mean) ** 2 / n
    z = np.abs(mean - exact) / (np.sqrt(var / n) + 1e-7)
    assert np.max(z) < 5.0, f"max |z| = {np.max(z):.2f} over {z.size} coordinates"
    rel = np.linalg.norm(mean - exact) / np.linalg.norm(exact)
    assert rel < 0.1, rel
    assert np.linalg.norm(exact) > 0.01  # not a trivial check


def test_controller_learns_the_best_arm_in_one_compiled_step_and_survives_invalid_rewards():
    # programs (0, 2) and (1, 1) are invalid: NaN and inf rewards, made the worst (-1)
    table = TABLE.at[0, 2].set(jnp.nan).at[1, 1].set(jnp.inf)
    ctrl = search.controller(BANDIT, hidden=8)
    rl = search.reinforce(ctrl, optax.adam(0.05), entropy_weight=1e-3, worst_reward=-1.0)
    step = search.make_search_step(rl, lambda c, k: table[c[:, 0], c[:, 1]], num=32)
    state = rl.init(jax.random.key(0))

    def probs(state):
        return np.exp(np.asarray(ctrl.log_prob(state.params, EVERY)[0])).reshape(3, 4)

    before = probs(state)
    np.testing.assert_allclose(before, 1 / 12, rtol=1e-5)  # the controller starts uniform
    invalid_seen = 0.0
    for i in range(40):
        state, metrics, codes, rewards = step(state, jax.random.key(10 + i))
        invalid_seen += float(metrics["invalid_fraction"])
        assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(state.params))
        assert np.isfinite(float(state.baseline)) and float(metrics["reward_mean"]) >= -1.0
    after = probs(state)
    assert codes.shape == (32, 2) and int(state.count) == 40 and invalid_seen > 0
    assert after[2, 1] > 0.6 > before[2, 1]
    assert after[0, 2] < before[0, 2] and after[1, 1] < before[1, 1]  # worst: pushed down


def test_classification_task_from_character_images():
    imgs = np.random.default_rng(0).random((30, 20, 28, 28, 1), np.float32)
    t = search.classification_task(imgs, num_classes=6, seed=1, train=12, val=4, size=14)
    assert (
        t.train_x.shape == (72, 196) and t.val_x.shape == (24, 196) and t.test_x.shape == (24, 196)
    )
    assert t.num_classes == 6 and sorted(np.unique(t.test_y).tolist()) == list(range(6))
    assert abs(float(t.train_x.mean())) < 1e-4
    rows = {tuple(np.round(r, 4)) for r in np.asarray(t.train_x)}
    assert not rows & {tuple(np.round(r, 4)) for r in np.asarray(t.val_x)}  # other drawers
    with pytest.raises(ValueError, match="num_classes=40"):
        search.classification_task(imgs, num_classes=40)
