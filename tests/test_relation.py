"""Relation Networks: scores in [0, 1] (absent classes -inf), class pooling, MSE targets, conformance."""

import jax
import jax.numpy as jnp
import numpy as np
from metric_helpers import logits_fn, tiny_conv, tiny_data

from mamlx import relation
from mamlx.algorithms.relation import relation_mse
from mamlx.tasks import fewshot_sampler
from mamlx.testing import check_meta_learner


def tiny_relation(**kw):
    # 8x8 -> 4x4x4 feature maps (pool only in the first of two blocks).
    embed_fn, init_fn = tiny_conv(flatten=False, pool_blocks=1)
    return relation(embed_fn, init_fn, feature_shape=(4, 4, 4), filters=4, hidden=4, **kw)


def test_scores_lie_in_unit_interval_and_absent_classes_are_minus_inf():
    learner = tiny_relation()
    f = logits_fn(learner)
    sx, sy, qx, _ = fewshot_sampler(3, 2, 4).sample(jax.random.PRNGKey(0), tiny_data())
    for seed in range(2):
        params = learner.init(jax.random.PRNGKey(seed))
        scores = np.asarray(f(params, sx, sy, qx))
        assert scores.shape == (12, 6)
        assert np.all((scores[:, :3] >= 0) & (scores[:, :3] <= 1))
        assert np.all(scores[:, 3:] == -np.inf)
    # Scaled-up parameters push scores to the ends of the interval but never outside.
    big = jax.tree.map(lambda a: 50.0 * a, params)
    scores = np.asarray(f(big, sx, sy, qx))
    assert np.all((scores[:, :3] >= 0) & (scores[:, :3] <= 1))


def test_evaluation_reports_the_training_mse_not_a_cross_entropy_of_scores():
    # The evaluator's loss is the learner's own (predict_loss): the relation MSE that
    # outer_loss trains on, whatever the number of empty score columns (shots).
    from mamlx import evaluate

    data = tiny_data()
    learner = tiny_relation()
    params = learner.init(jax.random.PRNGKey(0))
    sampler = fewshot_sampler(3, 3, 2)  # 9 score columns: a cross-entropy gave ln(9) = 2.2
    got = evaluate(learner, params, sampler, data, key=jax.random.PRNGKey(5), num_tasks=6)
    keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.PRNGKey(5), jnp.arange(6))
    eps = jax.vmap(sampler.sample, (0, None))(keys, data)  # task i from fold_in(key, i)
    losses, metrics = jax.vmap(learner.outer_loss, (None, 0))(params, eps)
    np.testing.assert_allclose(got[None]["loss"][0], np.mean(losses), rtol=1e-5)
    np.testing.assert_allclose(got[None]["accuracy"][0], np.mean(metrics["accuracy"]))
    assert got[None]["loss"][0] < 0.5  # an MSE of scores in [0, 1]


def test_class_features_sum_or_mean_support_maps_and_predict_is_permutation_equivariant():
    sx, sy, qx, _ = fewshot_sampler(3, 2, 2).sample(jax.random.PRNGKey(1), tiny_data())
    learner = tiny_relation()
    params = learner.init(jax.random.PRNGKey(0))
    state = jax.jit(learner.adapt)(params, sx, sy)
    mean_state = jax.jit(tiny_relation(aggregate="mean").adapt)(params, sx, sy)
    np.testing.assert_allclose(
        state.class_features[:3], 2 * mean_state.class_features[:3], atol=1e-5
    )
    f = logits_fn(learner)
    base = f(params, sx, sy, qx)[:, :3]
    perm = jnp.asarray([3, 0, 5, 1, 4, 2])
    np.testing.assert_allclose(f(params, sx[perm], sy[perm], qx)[:, :3], base, atol=1e-5)
    pi = jnp.asarray([2, 0, 1])
    np.testing.assert_allclose(f(params, sx, pi[sy], qx)[:, pi], base, atol=1e-5)


def test_scores_do_not_depend_on_the_number_of_empty_class_columns():
    # Repeating the support set keeps the mean class features but adds S - N empty columns;
    # the relation module's batch norm must see only the N x Q present pairs (as in the paper).
    sx, sy, qx, _ = fewshot_sampler(3, 1, 3).sample(jax.random.PRNGKey(2), tiny_data())
    learner = tiny_relation(aggregate="mean")
    f = logits_fn(learner)
    spread = 0.0
    for seed in range(3):  # scaled-up weights: scores spread out instead of sitting at 0.5
        params = jax.tree.map(lambda a: 3.0 * a, learner.init(jax.random.PRNGKey(seed)))
        base = np.asarray(f(params, sx, sy, qx))[:, :3]
        spread = max(spread, float(base.std()))
        for k in (2, 5):
            scores = np.asarray(f(params, jnp.tile(sx, (k, 1, 1, 1)), jnp.tile(sy, k), qx))
            assert scores.shape == (9, 3 * k) and np.all(scores[:, 3:] == -np.inf)
            np.testing.assert_allclose(scores[:, :3], base, atol=1e-5, err_msg=f"x{k}, {seed}")
    assert spread > 0.05  # the check had something to compare


def test_mse_to_one_hot_targets():
    scores = jnp.asarray([[0.9, 0.2, 0.0], [0.4, 0.7, 0.0]])
    loss = relation_mse(scores, jnp.asarray([0, 1]), jnp.asarray([1.0, 1.0, 0.0]))
    want = ((0.9 - 1) ** 2 + 0.2**2 + 0.4**2 + (0.7 - 1) ** 2) / 4
    np.testing.assert_allclose(loss, want, rtol=1e-6)


def test_conformance():
    # float32 without finite differences: the relation module's convolutions make
    # the float64 finite-difference check slow on CPU; the gradient is plain
    # jax.grad of the MSE (the check runs for the other learners).
    check_meta_learner(tiny_relation(), fewshot_sampler(2, 1, 2), tiny_data(), num_tasks=2)


def test_all_pairs_equals_the_module_on_concatenated_pairs_values_and_gradients():
    # all_pairs convolves the Q query and C class maps with the two halves of the first
    # kernel and sums per pair; the module on the Q*C concatenated pairs is the definition.
    # Batch-norm statistics over masked pairs only, as the learner uses them.
    from mamlx.models import RelationModule, model

    apply_fn, init_fn = model(lambda r: RelationModule((5, 5, 6), filters=4, hidden=3, rngs=r))
    params = init_fn(jax.random.PRNGKey(0))
    kc, kq = jax.random.split(jax.random.PRNGKey(1))
    classes = jax.random.normal(kc, (4, 5, 5, 3))
    queries = jax.random.normal(kq, (6, 5, 5, 3))
    mask = jnp.broadcast_to(jnp.array([True, True, False, True]), (6, 4)).reshape(-1)

    def concatenated(p, c, q):
        pairs = jnp.concatenate(
            [
                jnp.broadcast_to(c[None], (6, *c.shape)),
                jnp.broadcast_to(q[:, None], (6, 4, 5, 5, 3)),
            ],
            axis=-1,
        )
        return apply_fn(p, pairs.reshape(24, 5, 5, 6), mask=mask).reshape(6, 4)

    def split(p, c, q):
        return apply_fn(p, c, q, mask=mask, method="all_pairs")

    np.testing.assert_allclose(
        split(params, classes, queries), concatenated(params, classes, queries), atol=1e-5
    )
    weights = jax.random.normal(jax.random.PRNGKey(2), (6, 4))
    grads = [
        jax.grad(lambda p, c, q: jnp.sum(weights * jnp.tanh(f(p, c, q))), argnums=(0, 1, 2))(
            params, classes, queries
        )
        for f in (split, concatenated)
    ]
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1]), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert float(jnp.abs(grads[0][1]).sum()) > 0  # the class maps get gradient too
