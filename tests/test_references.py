"""Every learner against an independent reference, and the references bite (issue 25).

The references (:mod:`mamlx.references`, :mod:`mamlx.references_metric`) recompute the
meta-loss and meta-gradient by another route than the learners: the explicit backward
recursion over stored inner iterates, NumPy loops, NumPy forward passes. Here each
registered learner is compared with its reference through the registry's own ``build``
on a tiny float64 problem, every learner is either referenced or exempt with a reason,
mutated learners fail the comparison (every gradient-based learner: the inner step of the
wrong sign, one step too few, support and query swapped; the metric learners: support and
query swapped, where the loss is not symmetric in them; a swapped relation pair, a generator
fed [z, e] or no noise), and one learned-optimizer meta-training step is recomputed by hand.
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

from mamlx import Episode, anil, fomaml, imaml, maml, registry, reptile
from mamlx import references as refs
from mamlx import references_metric as metric_refs
from mamlx.algorithms import meta_lstm as meta_lstm_module
from mamlx.config import FewShotConfig
from mamlx.datasets import Context, sinusoid_model
from mamlx.models import model, tree_cast
from mamlx.models.mlp import FCNet
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


def tiny_norm_classifier(rngs):
    """4 inputs -> 3 units, batch norm, ReLU -> 3 logits (:class:`~mamlx.models.FCNet`):
    MAML++'s per-step batch-norm copies need normalization parameters."""
    return FCNet(WAYS, in_features=SIDE * SIDE, hidden=(3,), rngs=rngs)


def tiny_context(classifier=TinyClassifier):
    return Context(
        run=FewShotConfig(algo="maml++", steps=10),  # MAML++'s epochs are the run's steps / 100
        input_shape=(SIDE, SIDE, 1),
        task_map="vmap",
        classifier=lambda: model(classifier),
        embedding=lambda flatten=True, **_: model(lambda r: TinyEmbedding(flatten, r)),
    )


#: the classifier a learner is tested on, where not :class:`TinyClassifier`
CLASSIFIERS = {"maml++": tiny_norm_classifier}


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
    # per-step batch norm, LSLR and the multi-step loss on (the registry's defaults), the
    # weights at STEPS' step 1 (epoch 1 of 2) the authors' (0.25, 0.75)
    "maml++": {"inner_lr": 0.3, "inner_steps": 2, "msl_epochs": 2, "epoch_steps": 1},
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

#: the training step ``meta_grad`` and the reference get, for learners whose objective follows it
STEPS = {"maml++": 1}


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
    entry, ctx = registry.get_learner(name), tiny_context(CLASSIFIERS.get(name, TinyClassifier))
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
        c, key = case(name), jax.random.PRNGKey(KEY)
        check_reference(c.learner, c.reference, c.params, c.batch, key=key, step=STEPS.get(name))


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


def _support_gradient_negated(trajectory):
    """``meta_lstm_trajectory`` fed a support loss of the same value whose gradient is −∇L."""

    def mutant(lstm, loss_fn, *args, **kw):
        flipped = lambda p: 2 * jax.lax.stop_gradient(loss_fn(p)) - loss_fn(p)  # noqa: E731
        return trajectory(lstm, flipped, *args, **kw)

    return mutant


def _sign_flipped(name: str, c: Case, patch: pytest.MonkeyPatch):
    """The learner with its inner step going up the support loss: SGD (iMAML: on the proximal
    loss) at −α, Reptile's Adam at −α, Meta-SGD and MAML++ (LSLR) fed their learned rates
    negated, the meta-LSTM fed −∇L_s (its learned update has no rate to negate: the gates are
    sigmoids, so the flip is of the gradient it reads and subtracts, c_t = f ⊙ θ + i ⊙ ∇)."""
    apply_fn, cfg = tiny_context().classifier()[0], c.config
    if name in ("metasgd", "maml++"):
        assert name == "metasgd" or cfg.lslr, "MAML++'s sign flip negates its LSLR rates"
        return c.learner, {**c.params, "lr": jax.tree.map(jnp.negative, c.params["lr"])}
    if name == "meta-lstm":
        trajectory = meta_lstm_module.meta_lstm_trajectory
        patch.setattr(
            meta_lstm_module, "meta_lstm_trajectory", _support_gradient_negated(trajectory)
        )
        return registry.get_learner(name).build(cfg, tiny_context()), c.params
    flipped = optax.sgd(-cfg.inner_lr)
    if name == "reptile":
        if cfg.inner_opt == "adam":
            flipped = optax.adam(-cfg.inner_lr, b1=0.0)
        return reptile(apply_fn, None, inner_opt=flipped, inner_steps=cfg.inner_steps), c.params
    kw = {"inner_lr": flipped, "inner_steps": cfg.inner_steps}
    if name == "imaml":
        return imaml(apply_fn, None, lam=cfg.lam, cg_steps=cfg.cg_steps, **kw), c.params
    return {"maml": maml, "fomaml": fomaml, "anil": anil}[name](apply_fn, None, **kw), c.params


def _shaped_like(params, learner):
    """``params`` cut to ``learner``'s shapes: MAML++ with one step fewer keeps batch-norm copies
    0..K−1 and rates 0..K−2 (the others' shapes do not depend on the number of steps)."""
    shapes = jax.eval_shape(learner.init, jax.random.PRNGKey(0))
    return jax.tree.map(lambda a, s: a[tuple(slice(n) for n in s.shape)], params, shapes)


GRADIENT_LEARNERS = ["maml", "fomaml", "metasgd", "anil", "maml++", "imaml", "reptile", "meta-lstm"]


@pytest.mark.parametrize("name", GRADIENT_LEARNERS)
def test_mutated_gradient_learners_fail_their_reference(name, monkeypatch):
    """Three mutants of each gradient-based learner disagree with its reference on the
    problem where the learner itself agrees (test_registered_learner_matches_its_reference),
    each compared with the reference's answer for the unperturbed learner and inputs:

    * the inner step of the wrong sign (:func:`_sign_flipped`: SGD at −α for MAML, FOMAML,
      ANIL and iMAML's proximal steps; Reptile's inner Adam at −α; Meta-SGD and MAML++ fed
      their learned rates negated; the meta-LSTM, whose update is learned and has no rate,
      fed the support gradient negated);
    * one inner step fewer (the registry's build with ``inner_steps − 1``; MAML++ on its
      meta-parameters cut to K − 1 steps, :func:`_shaped_like`);
    * the support and query sets swapped (every learner here adapts on the support set;
      Reptile's pseudo-gradient φ − θ̃ never reads the query set, but θ̃ is then adapted on
      the other set, so it moves too).

    All three apply to every learner here."""
    with jax.enable_x64(True):
        c, key, step = case(name), jax.random.PRNGKey(KEY), STEPS.get(name)
        want = c.reference(c.params, c.batch, key, **({} if step is None else {"step": step}))

        def reference(params, batch, key=None, step=None):  # the unperturbed inputs' answer
            return want

        check_reference(c.learner, reference, c.params, c.batch, key=key, step=step)
        fewer = registry.get_learner(name).build(
            replace(c.config, inner_steps=c.config.inner_steps - 1),
            tiny_context(CLASSIFIERS.get(name, TinyClassifier)),
        )
        swapped = _swapped(c.batch)
        mutants = {
            "inner step sign flipped": lambda patch: (*_sign_flipped(name, c, patch), c.batch),
            "one inner step fewer": lambda patch: (fewer, _shaped_like(c.params, fewer), c.batch),
            "support and query swapped": lambda patch: (c.learner, c.params, swapped),
        }
        for what, make in mutants.items():
            with monkeypatch.context() as patch:  # the meta-LSTM's sign flip patches its module
                mutant, params, batch = make(patch)
                with pytest.raises(AssertionError, match="reference"):
                    check_reference(mutant, reference, params, batch, key=key, step=step)
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


def _swapped(batch: Episode) -> Episode:
    return Episode(batch.query_x, batch.query_y, batch.support_x, batch.support_y)


@pytest.mark.parametrize(
    "name", ["protonet", "matching", "relation", "hallucination", "siamese", "pretrain"]
)
def test_metric_learners_with_support_and_query_swapped_fail_their_reference(name):
    """The support and query sets swapped, against the reference on the unperturbed episode.

    The inner step's sign and count do not exist for the metric learners: they take no
    gradient steps on a task, they adapt by embedding its support set (prototypes,
    attention, relation pairs, hallucinated examples, pair scores). Swapping the two sets
    applies, and fails: ProtoNet, Matching, Relation and Hallucination on the swapped episode
    disagree with their reference on the unperturbed one (the meta-loss; the learner on the
    unperturbed episode agrees, test_registered_learner_matches_its_reference).

    Two are invariant to the swap, which is asserted instead (the learner on the swapped
    episode still matches the reference on the unperturbed one):

    * Siamese networks (``train_on="episodes"``): the loss is the mean binary cross-entropy
      over every query-support pair of the symmetric score σ(b + α·|f(x₁) − f(x₂)|), and
      the swap gives the same pairs. The swap shows in its one-shot predictions (each query
      classified by its most similar support example), which the reference's logits catch.
    * Pre-training: its loss is at φ on support ∪ query, the same examples either way. It has
      no inner loop in training (its inner steps are test-time fine-tuning), so no sign or
      step mutation either; the nearest equivalent, a learner that ignores the query set
      (given the support set as both), fails.
    """
    with jax.enable_x64(True):
        c, key = case(name), jax.random.PRNGKey(KEY)

        def reference(params, batch, key=None):  # the unperturbed episode's reference
            return c.reference(params, c.batch, key)

        mutants = {"support and query swapped": _swapped(c.batch)}
        if name in ("siamese", "pretrain"):  # invariant under the swap
            check_reference(
                c.learner, reference, c.params, mutants.pop("support and query swapped"), key=key
            )
        if name == "pretrain":
            b = c.batch
            mutants["query set ignored"] = Episode(
                b.support_x, b.support_y, b.support_x, b.support_y
            )
        if name == "siamese":
            ep, embed_fn = refs.tasks(c.batch)[0], tiny_context().embedding()[0]
            state = c.learner.adapt(c.params, ep.query_x, ep.query_y, key=key)  # swapped
            got = c.learner.predict(state, ep.support_x)[:, :WAYS]
            want = metric_refs.siamese_logits(embed_fn, c.params, *ep[:3])
            assert got.shape == want.shape
            assert not np.allclose(got, want, rtol=1e-6, atol=1e-8), "the reference missed the swap"
        for what, batch in mutants.items():
            with pytest.raises(AssertionError, match="reference"):
                check_reference(c.learner, reference, c.params, batch, key=key)
                pytest.fail(f"{name}: the reference missed the mutant '{what}'")


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
