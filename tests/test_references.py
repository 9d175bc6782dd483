"""Every learner against an independent reference, and the references bite (issue 25).

The references (:mod:`mamlx.references`, :mod:`mamlx.references_metric`) recompute the
meta-loss and meta-gradient by another route than the learners: the explicit backward
recursion over stored inner iterates, NumPy loops, NumPy forward passes. Here each
registered learner is compared with its reference through the registry's own ``build``
on a tiny float64 problem, every learner is either referenced or exempt with a reason,
mutated learners (inner step of the wrong sign, one step too few, support and query
swapped; a swapped relation pair, a generator fed [z, e] or no noise) fail the
comparison, and one learned-optimizer meta-training step is recomputed by hand.
"""

import functools
from dataclasses import replace
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mamlx import Episode, anil, fomaml, maml, registry, reptile
from mamlx import references as refs
from mamlx import references_metric as metric_refs
from mamlx.datasets import Context, sinusoid_model
from mamlx.models import model, tree_cast
from mamlx.testing import REFERENCE_EXEMPT, REFERENCES, check_reference

WAYS, SIDE = 3, 2  # 3-way tasks of 2x2 one-channel "images"


class TinyClassifier(nnx.Module):
    """4 inputs -> 3 tanh units -> ``head`` with one logit per class (24 parameters in three
    arrays: few leaves keep the per-leaf programs, the meta-LSTM's, small to compile)."""

    def __init__(self, rngs):
        self.body = nnx.Linear(SIDE * SIDE, 3, use_bias=False, rngs=rngs)
        self.head = nnx.Linear(3, WAYS, rngs=rngs)

    def __call__(self, x):
        return self.head(jnp.tanh(self.body(x.reshape(x.shape[0], -1))))


class TinyEmbedding(nnx.Module):
    """A 3-d embedding, or (``flatten=False``) 4x4x2 feature maps for the relation module."""

    def __init__(self, flatten, rngs):
        self.flatten = flatten
        self.layer = nnx.Linear(SIDE * SIDE, 3 if flatten else 32, rngs=rngs)

    def __call__(self, x):
        e = jnp.tanh(self.layer(x.reshape(x.shape[0], -1)))
        return e if self.flatten else e.reshape(x.shape[0], 4, 4, 2)


def tiny_context():
    return Context(
        run=None,
        input_shape=(SIDE, SIDE, 1),
        task_map="vmap",
        classifier=lambda: model(TinyClassifier),
        embedding=lambda flatten=True, **_: model(lambda r: TinyEmbedding(flatten, r)),
    )


def class_batch(shots, tasks=2, queries=2, seed=0):
    """``tasks`` 3-way episodes of six noisy class templates, float64 (call under x64)."""
    rng = np.random.default_rng(seed)
    templates = rng.normal(size=(6, SIDE, SIDE, 1))
    parts = {"support_x": [], "query_x": []}
    for _ in range(tasks):
        classes = rng.permutation(6)[:WAYS]
        for part, n in (("support_x", shots), ("query_x", queries)):
            noise = 0.5 * rng.normal(size=(WAYS, n, SIDE, SIDE, 1))
            parts[part].append((templates[classes][:, None] + noise).reshape(-1, SIDE, SIDE, 1))
    labels = lambda n: jnp.asarray(np.tile(np.repeat(np.arange(WAYS), n), (tasks, 1)))  # noqa: E731
    x = {k: jnp.asarray(np.stack(v)) for k, v in parts.items()}
    return Episode(x["support_x"], labels(shots), x["query_x"], labels(queries))


def sine_batch(tasks=2, shots=4, seed=0):
    """``tasks`` sine-wave regression episodes (Finn et al.'s ranges), float64."""
    rng = np.random.default_rng(seed)
    amp, phase = rng.uniform(0.1, 5.0, (tasks, 1, 1)), rng.uniform(0, np.pi, (tasks, 1, 1))
    xs, xq = rng.uniform(-5, 5, (2, tasks, shots, 1))
    return Episode(*map(jnp.asarray, (xs, amp * np.sin(xs + phase), xq, amp * np.sin(xq + phase))))


def init64(learner, seed=1):
    """Float64 meta-parameters of the learner's shapes, drawn from N(0, 0.5²): no zero
    biases, so no ReLU sits on its kink (where central differences and the derivative
    part), no symmetry that hides a mistake, and no slow eager initialisation."""
    shapes = jax.eval_shape(learner.init, jax.random.PRNGKey(seed))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(0.5 * rng.normal(size=s.shape)), shapes)


# Small, fast settings of each learner (its own config's fields; the rest are defaults).
SETTINGS = {
    "maml": {"inner_lr": 0.3, "inner_steps": 2},
    "fomaml": {"inner_lr": 0.3, "inner_steps": 2},
    "anil": {"inner_lr": 0.3, "inner_steps": 2},
    "metasgd": {"inner_lr": 0.3, "inner_steps": 2},
    "imaml": {"inner_lr": 0.1, "inner_steps": 3, "lam": 2.0, "cg_steps": 40},
    # the paper's inner Adam (β₁ = 0); inner SGD: test_reptile_with_sgd_on_sine_waves_...
    "reptile": {"inner_lr": 0.1, "inner_steps": 3, "inner_opt": "adam"},
    "meta-lstm": {"inner_lr": 0.2, "inner_steps": 2, "lstm_hidden": 2},
    "pretrain": {},
    "protonet": {},
    "matching": {"fce_steps": 2, "scale": 2.0},
    "relation": {"hidden": 2},
    "hallucination": {"num_hallucinated": 2, "noise_dim": 2, "hidden": 3},
    "siamese": {"train_on": "episodes"},
}


@pytest.mark.parametrize("name", registry.learner_names())
def test_every_registered_learner_has_a_reference_or_a_stated_exemption(name):
    assert (name in REFERENCES) != (name in REFERENCE_EXEMPT), (
        f"{name!r}: register a reference in mamlx.testing.REFERENCES (or, with the reason, "
        f"an exemption in REFERENCE_EXEMPT)"
    )
    assert name in SETTINGS or name in REFERENCE_EXEMPT, f"add {name!r}'s test settings here"


class Case(NamedTuple):
    """A registered learner built on the tiny problem, its reference and its inputs."""

    config: Any
    learner: Any
    reference: Any
    params: Any
    batch: Episode


KEY = 3  # the PRNG key meta_grad and the references get (the hallucinator's noise)


@functools.cache
def case(name: str) -> Case:
    """Built once per learner (float64; under ``jax.enable_x64``), so later tests on the same
    learner reuse its compiled ``meta_grad`` (JAX caches by function)."""
    entry, ctx = registry.get_learner(name), tiny_context()
    config = entry.config(**SETTINGS[name])
    learner = entry.build(config, ctx)
    batch = class_batch(1 if name == "hallucination" else 2)  # its reference is one-shot
    return Case(config, learner, REFERENCES[name](config, ctx), init64(learner), batch)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_registered_learner_matches_its_reference(name):
    """The learner as the registry builds it against the reference built from the same
    config and networks: the meta-loss, and the meta-gradient to about 1e-10 (central
    differences of the NumPy loss, for the metric learners' loss-only references)."""
    with jax.enable_x64(True):
        c = case(name)
        check_reference(c.learner, c.reference, c.params, c.batch, key=jax.random.PRNGKey(KEY))


def test_the_conformance_suite_runs_a_given_reference():
    """``check_meta_learner(..., reference=)`` compares with the reference, after the rest of
    the contract; a wrong one fails it."""
    from mamlx.testing import check_meta_learner

    class Fixed:  # a sampler of the one tiny batch
        def sample_batch(self, key, data, n):
            return c.batch

    with jax.enable_x64(True):
        c = case("fomaml")
        learner = c.learner._replace(init=lambda key: c.params)
        check_meta_learner(learner, Fixed(), num_tasks=2, reference=c.reference)
        wrong = REFERENCES["maml"](c.config, tiny_context())  # second order: not FOMAML's
        with pytest.raises(AssertionError, match="reference"):
            check_meta_learner(learner, Fixed(), num_tasks=2, reference=wrong)


# --- mutations: the references bite ---------------------------------------------------------


def _sign_flipped(name: str, c: Case):
    """The learner with SGD at −α in its inner loop (Meta-SGD: its own, fed −α)."""
    apply_fn = tiny_context().classifier()[0]
    kw = {"inner_lr": optax.sgd(-c.config.inner_lr), "inner_steps": c.config.inner_steps}
    if name == "metasgd":
        return c.learner, {**c.params, "lr": jax.tree.map(jnp.negative, c.params["lr"])}
    return {"maml": maml, "fomaml": fomaml, "anil": anil}[name](apply_fn, None, **kw), c.params


@pytest.mark.parametrize("name", ["maml", "fomaml", "metasgd", "anil"])
def test_mutated_gradient_learners_fail_their_reference(name):
    """Three mutants of each gradient-based learner disagree with its reference on the
    problem where the learner itself agrees (test_registered_learner_matches_its_reference):
    the inner step of the wrong sign (SGD at −α; Meta-SGD fed its rates negated), one inner
    step fewer (the registry's build, one step), and the support and query sets swapped."""
    with jax.enable_x64(True):
        c, key = case(name), jax.random.PRNGKey(KEY)
        want = c.reference(c.params, c.batch, key)

        def reference(params, batch, key=None):  # the answer for the unperturbed inputs
            return want

        check_reference(c.learner, reference, c.params, c.batch, key=key)  # compiled already
        fewer = replace(c.config, inner_steps=c.config.inner_steps - 1)
        swapped = Episode(c.batch.query_x, c.batch.query_y, c.batch.support_x, c.batch.support_y)
        mutants = {
            "inner step sign flipped": (*_sign_flipped(name, c), c.batch),
            "one inner step fewer": (
                registry.get_learner(name).build(fewer, tiny_context()),
                c.params,
                c.batch,
            ),
            "support and query swapped": (c.learner, c.params, swapped),
        }
        for what, (mutant, params, batch) in mutants.items():
            with pytest.raises(AssertionError, match="reference"):
                check_reference(mutant, reference, params, batch, key=key)
                pytest.fail(f"{name}: the reference missed the mutant '{what}'")


def test_reptile_with_sgd_on_sine_waves_matches_a_numpy_loop():
    """Reptile with inner SGD, and the references' mean-squared-error path (Adam, the
    paper's, on classification: test_registered_learner_matches_its_reference)."""
    with jax.enable_x64(True):
        apply_fn, init_fn = sinusoid_model((4,))
        params = tree_cast(init_fn(jax.random.PRNGKey(0)), jnp.float64)
        reference = refs.reptile_reference(apply_fn, inner_lr=0.05, inner_steps=3)
        learner = reptile(apply_fn, None, inner_opt=0.05, inner_steps=3)
        check_reference(learner, reference, params, sine_batch())


# --- metric learners: predictions against NumPy, and mutants through their parameters -------


def _swap_rows(w, first):
    """The kernel ``w'`` with ``[a, b] @ w' = [b, a] @ w`` for ``len(b) = first``."""
    return jnp.concatenate([w[first:], w[:first]])


@pytest.mark.parametrize("name", ["protonet", "matching", "relation", "hallucination", "siamese"])
def test_metric_predictions_match_numpy_and_mutants_do_not(name):
    """Each metric learner's ``predict(adapt(...))`` equals the NumPy reference's logits.
    Mutants, made through the parameters, disagree: a relation module fed ``[query, class]``
    (its first kernel's input halves swapped) and a hallucinator fed ``[z, e]`` or no noise
    (its first kernel's rows swapped or zeroed; the generator is not zero)."""
    with jax.enable_x64(True):
        c = case(name)
        learner, params, config = c.learner, c.params, c.config
        ep, key = refs.tasks(c.batch)[0], jax.random.PRNGKey(4)

        def predict(p):
            return learner.predict(
                learner.adapt(p, ep.support_x, ep.support_y, key=key), ep.query_x
            )

        predict = jax.jit(predict)
        if name == "siamese":
            embed_fn = tiny_context().embedding()[0]
            want = metric_refs.siamese_logits(embed_fn, params, *ep[:3])
        else:
            want = c.reference.logits(params, ep.support_x, ep.support_y, ep.query_x, key)
        np.testing.assert_allclose(predict(params)[:, :WAYS], want, rtol=1e-7, atol=1e-10)
        mutants = {}
        if name == "relation":
            kernel = params["relation"]["blocks"][0]["kernel"]  # (3, 3, 2C, filters)
            half = kernel.shape[2] // 2
            swapped = jnp.concatenate([kernel[:, :, half:], kernel[:, :, :half]], axis=2)
            mutants["[query, class] pairs"] = _with(
                params, ("relation", "blocks", 0, "kernel"), swapped
            )
        if name == "hallucination":
            w = params["generator"]["layers"][0]["kernel"]  # rows: [e (D), z (D_z)]
            dz = config.noise_dim
            path = ("generator", "layers", 0, "kernel")
            mutants["G fed [z, e]"] = _with(params, path, _swap_rows(w, dz))
            mutants["G without noise"] = _with(params, path, w.at[w.shape[0] - dz :].set(0.0))
            embed_fn = tiny_context().embedding()[0]
            plain = metric_refs.protonet_logits(embed_fn, params["embed"], *ep[:3])
            assert not np.allclose(want, plain, atol=1e-3), "a zero generator tests nothing"
        for what, p in mutants.items():
            got = predict(p)[:, :WAYS]
            assert not np.allclose(got, want, rtol=1e-6, atol=1e-8), f"the reference missed {what}"


def _with(tree, path, value):
    """A copy of the nested dict ``tree`` with ``value`` at ``path``."""
    out = dict(tree)
    out[path[0]] = _with(tree[path[0]], path[1:], value) if len(path) > 1 else value
    return out


def test_siamese_pair_training_matches_the_reference():
    """``train_on="pairs"`` (Koch et al.): the mean binary cross-entropy of σ(b + α·|f(x₁) − f(x₂)|)
    over verification pairs, each pair batch embedded at once."""
    from mamlx.algorithms.siamese import Pairs

    with jax.enable_x64(True):
        entry, ctx = registry.get_learner("siamese"), tiny_context()
        config = entry.config(train_on="pairs")
        learner = entry.build(config, ctx)
        params = init64(learner)
        ep = class_batch(2, tasks=2)
        same = (ep.support_y[:, ::2, None] == ep.query_y[:, None, :4]).astype(jnp.float64)
        pairs = Pairs(
            jnp.repeat(ep.support_x[:, ::2], 4, axis=1),
            jnp.tile(ep.query_x[:, :4], (1, 3, 1, 1, 1)),
            same.reshape(2, -1),
        )
        check_reference(learner, REFERENCES["siamese"](config, ctx), params, pairs)


# --- learned optimizers: one meta-training step by hand --------------------------------------


def _by_hand(meta_params, meta_opt, key, config, family, factory):
    """``make_meta_train_step`` written out: truncations of ``config.truncation`` optimizee
    steps on every task, each giving ∇ of the truncation's meta-loss (the optimizee's gradients
    held constant, as in the paper) and one meta-update; optimizee state carried over."""
    from mamlx.optimizers import sample_problems

    tasks, params, states = sample_problems(family, factory(meta_params), key, config.num_tasks)
    n, meta_state, losses = config.num_tasks, meta_opt.init(meta_params), []

    def meta_loss(mp, params, states):
        opt, total, carried = factory(mp), 0.0, []
        for i in range(n):
            task, p, s = (jax.tree.map(lambda a, i=i: a[i], t) for t in (tasks, params, states))
            seen = []
            for _ in range(config.truncation):
                g = jax.lax.stop_gradient(jax.grad(family.loss)(p, task))
                u, s = opt.update(g, s, p)
                p = jax.tree.map(jnp.add, p, u)
                seen.append(family.loss(p, task))  # f(θ_t), t = 1..T
            total = total + (sum(seen) / len(seen) if config.reduction == "mean" else sum(seen))
            carried.append((p, s))
        stack = lambda *a: jnp.stack(a)  # noqa: E731
        return total / n, jax.tree.map(stack, *carried)

    for _ in range(config.horizon // config.truncation):  # unrolled under jax.jit
        (loss, (params, states)), g = jax.value_and_grad(meta_loss, has_aux=True)(
            meta_params, params, states
        )
        updates, meta_state = meta_opt.update(g, meta_state, meta_params)
        meta_params = optax.apply_updates(meta_params, updates)
        losses.append(loss)
    return meta_params, jnp.stack(losses)


def learned_momentum(meta_params):
    """A learned optimizer that compiles fast: heavy-ball momentum with a learned rate and
    decay; its momentum is the optimizer state carried from one truncation to the next.
    (The LSTM optimizer's own rule has its NumPy reference in tests/test_lstm_optimizer.py.)"""
    return optax.chain(optax.trace(decay=meta_params["decay"]), optax.scale(-meta_params["lr"]))


def test_learned_optimizer_meta_train_step_equals_truncations_by_hand():
    """One ``make_meta_train_step`` (two truncations of two steps on two quadratics, Adam on
    the meta-parameters) equals the hand-written truncations and updates;
    ``reduction="sum"`` is T × ``"mean"`` (the truncation's meta-loss and its gradient)."""
    from mamlx.optimizers import (
        UnrollConfig,
        make_meta_train_step,
        quadratic_family,
        sample_problems,
        truncated_meta_loss,
    )

    with jax.enable_x64(True):
        family, key = quadratic_family(3), jax.random.key(1)
        mp = {"lr": jnp.asarray(0.02), "decay": jnp.asarray(0.5)}
        config = UnrollConfig(horizon=4, truncation=2, num_tasks=2)
        meta_opt = optax.adam(0.01)
        step = make_meta_train_step(learned_momentum, family, meta_opt, config)
        got, _, metrics = step(mp, meta_opt.init(mp), key)

        @jax.jit
        def by_hand(mp):
            """The step by hand, and the library's truncation meta-loss and gradient of the
            first truncation under each reduction."""
            tasks, params, states = sample_problems(family, learned_momentum(mp), key, 2)

            def loss(mp, reduction):
                args = (learned_momentum, family, params, states, tasks, 2, False, reduction)
                return truncated_meta_loss(mp, *args)[0]

            reductions = [jax.value_and_grad(loss)(mp, r) for r in ("mean", "sum")]
            return _by_hand(mp, meta_opt, key, config, family, learned_momentum), reductions

        (want, losses), ((mean, g_mean), (total, g_sum)) = by_hand(mp)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(metrics["meta_loss"], np.mean(losses), rtol=1e-9)
        moved = {k: float(got[k] - mp[k]) for k in mp}
        assert all(abs(v) > 1e-3 for v in moved.values()), moved  # Adam: about 0.01 a step
        # reduction="sum" is T x "mean": the truncation's meta-loss and its gradient.
        np.testing.assert_allclose(total, 2 * mean, rtol=1e-12)
        for a, b in zip(jax.tree.leaves(g_sum), jax.tree.leaves(g_mean), strict=True):
            np.testing.assert_allclose(a, 2 * b, rtol=1e-10, atol=1e-14)
