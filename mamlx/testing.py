"""Conformance checks every meta-learner passes (used by the test suite, handy for new learners).

``check_meta_learner`` verifies the shared contract of :class:`~mamlx.algorithms.MetaLearner`:
the meta-gradient jits and vmaps over tasks, losses are finite, results are
deterministic for a key, (optionally, on a tiny float64 problem) the meta-gradient
matches central finite differences, and (given a ``reference``) the meta-loss and
meta-gradient match an independent reference computed another way
(:func:`check_reference`; :mod:`mamlx.references`, :mod:`mamlx.references_metric`).

``REFERENCES`` maps a registered learner's name to ``build(learner_config, context) ->
reference``, built from the same settings and networks as the learner's own ``build``
(:mod:`mamlx.registry`); ``REFERENCE_EXEMPT`` names, with the reason, the learners that
have none yet. Every registered learner is in exactly one of the two (the test suite
checks it), so a learner added later is held to a reference too: add its builder here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from mamlx import references as refs
from mamlx import references_metric as metric_refs
from mamlx.algorithms.base import MetaLearner, takes_arg, takes_key
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
    reference: refs.Reference | None = None,
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
      reference: an independent reference of the learner (:func:`check_reference`);
        call it inside ``jax.enable_x64(True)`` with float64 params and data.
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

        @jax.jit  # called twice per direction: compiled once, not run op by op
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

    if reference is not None:
        check_reference(learner, reference, params, episodes, key=jax.random.fold_in(key, 1))


def check_reference(
    learner: MetaLearner,
    reference: refs.Reference,
    params: Any,
    batch: Any,
    *,
    key: Any = None,
    rtol: float = 1e-7,
    atol: float = 1e-10,
    fd_eps: float = 1e-5,
    fd_rtol: float = 1e-6,
    fd_directions: int = 2,
    step: int | None = None,
) -> None:
    """Assert that ``learner.meta_grad`` agrees with an independent reference (float64).

    The meta-loss (``metrics["loss"]``) must match the reference's loss, and the
    meta-gradient the reference's (leaf by leaf), or, for a reference that gives the loss
    only, the central differences of the *reference's* loss along random directions.

    Args:
      learner: the learner under test.
      reference: ``reference(params, batch, key) -> (loss, grads or None)``
        (:mod:`mamlx.references`).
      params: float64 meta-parameters.
      batch: a batch of tasks (leading task axis), float64 data.
      key: PRNG key given to ``meta_grad`` (if it takes one) and to the reference.
      rtol: relative tolerance of the loss and gradient comparison.
      atol: absolute tolerance of the loss and gradient comparison.
      fd_eps: central-difference step (loss-only references).
      fd_rtol: relative tolerance of the central-difference comparison.
      fd_directions: random directions of the central-difference comparison.
      step: the training step, given to ``meta_grad`` (if it takes one) and to the
        reference as ``step=`` for learners whose objective follows it (MAML++'s annealed
        multi-step loss and derivative order); ``None``: neither gets one.

    Raises:
      AssertionError: the learner disagrees with the reference.
      ValueError: params that are not float64.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from mamlx import maml
      >>> from mamlx.episodes import Episode
      >>> from mamlx.references import maml_reference
      >>> apply_fn = lambda w, x: jnp.tanh(x @ w)
      >>> with jax.enable_x64(True):
      ...     x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 3))
      ...     batch, w = Episode(x, x[..., 0], x, x[..., 1]), jnp.ones(3)
      ...     ref = maml_reference(apply_fn, inner_lr=0.1, inner_steps=2)
      ...     check_reference(maml(apply_fn, None, inner_lr=0.1, inner_steps=2), ref, w, batch)
      ...     try:  # one inner step too few
      ...         check_reference(maml(apply_fn, None, inner_lr=0.1), ref, w, batch)
      ...     except AssertionError:
      ...         print("caught")
      caught
    """
    floats = [
        a for a in jax.tree.leaves(params) if jnp.issubdtype(jnp.result_type(a), jnp.floating)
    ]
    if not floats or any(jnp.result_type(a) != jnp.float64 for a in floats):
        raise ValueError("check_reference needs float64 params: use jax.enable_x64(True)")
    kw = {"key": key} if key is not None and takes_key(learner.meta_grad) else {}
    when = {} if step is None else {"step": step}
    if step is not None and takes_arg(learner.meta_grad, "step"):
        kw.update(when)
    grads, metrics = jax.jit(learner.meta_grad)(params, batch, **kw)
    want_loss, want = reference(params, batch, key, **when)
    np.testing.assert_allclose(
        metrics["loss"], want_loss, rtol=rtol, atol=atol, err_msg="meta-loss != reference"
    )
    if want is not None:
        assert jax.tree.structure(grads) == jax.tree.structure(want), "grads' structure"
        for (path, g), w in zip(
            jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(want), strict=True
        ):
            np.testing.assert_allclose(
                g, w, rtol=rtol, atol=atol, err_msg=f"meta-gradient != reference at {path}"
            )
        return
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    gflat = np.asarray(jax.flatten_util.ravel_pytree(grads)[0])
    rng = np.random.default_rng(0)
    for _ in range(fd_directions):
        v = rng.normal(size=flat.shape)
        v /= np.linalg.norm(v)
        plus = reference(unravel(flat + fd_eps * v), batch, key, **when)[0]
        minus = reference(unravel(flat - fd_eps * v), batch, key, **when)[0]
        np.testing.assert_allclose(
            gflat @ v,
            (plus - minus) / (2 * fd_eps),
            rtol=fd_rtol,
            atol=1e-8,
            err_msg="meta-gradient != central differences of the reference's loss",
        )


def _is_head(path) -> bool:
    """ANIL's default head: the top-level ``"head"`` entry (:class:`~mamlx.models.Conv4`)."""
    return getattr(path[0], "key", None) == "head"


def _relation_reference(config, ctx):
    from mamlx.models import model
    from mamlx.models.heads import RelationModule

    embed = ctx.embedding(pool_blocks=2, flatten=False)
    h, w, c = ctx.feature_shape(embed)
    rel_fn, _ = model(
        lambda rngs: RelationModule((h, w, 2 * c), filters=c, hidden=config.hidden, rngs=rngs)
    )
    return metric_refs.relation_reference(embed[0], rel_fn, aggregate=config.aggregate)


def _hallucination_reference(config, ctx):
    embed = ctx.embedding()
    dim = ctx.feature_shape(embed)[0]
    return metric_refs.hallucination_reference(
        embed[0], num_hallucinated=config.num_hallucinated, noise_dim=config.noise_dim or dim
    )


def _mamlpp_reference(config, ctx):
    """MAML++'s reference with the learner's settings (``epoch_steps`` 0: a hundredth of the
    run's steps, as :mod:`mamlx.learners` reads it)."""
    return refs.mamlpp_reference(
        ctx.classifier()[0],
        inner_lr=config.inner_lr,
        inner_steps=config.inner_steps,
        first_order=config.first_order,
        multi_step_loss=config.multi_step_loss,
        msl_epochs=config.msl_epochs,
        first_order_epochs=config.first_order_epochs,
        per_step_bn=config.per_step_bn,
        lslr=config.lslr,
        epoch_steps=config.epoch_steps or ctx.run.steps / 100,
    )


def _gradient(make, **fixed):
    """``build(config, ctx)`` of a reference on the data set's classifier."""

    def build(config, ctx):
        kw = {"inner_lr": config.inner_lr, "inner_steps": config.inner_steps, **fixed}
        return make(ctx.classifier()[0], **kw)

    return build


#: learner name -> ``build(learner_config, context) -> reference`` (see the module docstring).
REFERENCES: dict[str, Callable[[Any, Any], refs.Reference]] = {
    "maml": _gradient(refs.maml_reference),
    "fomaml": _gradient(refs.maml_reference, first_order=True),
    "anil": _gradient(refs.maml_reference, is_adapted=_is_head),
    "metasgd": lambda c, ctx: refs.metasgd_reference(
        ctx.classifier()[0], inner_steps=c.inner_steps
    ),
    "maml++": _mamlpp_reference,
    "imaml": lambda c, ctx: refs.imaml_reference(
        ctx.classifier()[0], inner_lr=c.inner_lr, inner_steps=c.inner_steps, lam=c.lam
    ),
    "reptile": lambda c, ctx: refs.reptile_reference(
        ctx.classifier()[0],
        inner_lr=c.inner_lr,
        inner_steps=c.inner_steps,
        adam=c.inner_opt == "adam",
    ),
    "meta-lstm": lambda c, ctx: refs.meta_lstm_reference(
        ctx.classifier()[0], inner_steps=c.inner_steps, second_order=c.second_order
    ),
    "pretrain": lambda c, ctx: refs.pretrain_reference(ctx.classifier()[0]),
    "protonet": lambda c, ctx: metric_refs.protonet_reference(ctx.embedding()[0]),
    "matching": lambda c, ctx: metric_refs.matching_reference(
        ctx.embedding()[0], scale=c.scale, fce_steps=c.fce_steps
    ),
    "relation": _relation_reference,
    "hallucination": _hallucination_reference,
    "siamese": lambda c, ctx: metric_refs.siamese_reference(ctx.embedding()[0]),
}

#: learners without a reference yet, and why (each has its own tests named here).
REFERENCE_EXEMPT: dict[str, str] = {
    # A supervised classifier over all training classes, trained on class batches, not
    # episodes; tests/test_transfer.py compares its test-time rules with NumPy.
    "transfer": "trained on class batches, not episodes: no episode reference",
    # Verification losses on embeddings (tests/test_verification.py checks the margins and
    # the triplet mining against slow per-example references).
    "triplet": "a verification loss (tests/test_verification.py has its reference)",
    "sphereface": "a verification loss (tests/test_verification.py has its reference)",
    "cosface": "a verification loss (tests/test_verification.py has its reference)",
    "arcface": "a verification loss (tests/test_verification.py has its reference)",
}
