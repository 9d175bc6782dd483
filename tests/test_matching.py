"""Matching Networks: attention, nearest-neighbour limit, full-context embeddings, conformance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from metric_helpers import logits_fn, tiny_conv, tiny_data, tiny_mlp64

from mamlx import matching
from mamlx.algorithms.matching import cosine_attention, matching_log_probs
from mamlx.tasks import fewshot_sampler
from mamlx.testing import check_meta_learner


def test_attention_sums_to_one_over_support():
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    q, s = jax.random.normal(k1, (7, 5)), jax.random.normal(k2, (9, 5))
    for scale in (1.0, 10.0):
        a = cosine_attention(q, s, scale)
        assert a.shape == (7, 9) and np.all(a >= 0)
        np.testing.assert_allclose(a.sum(-1), 1.0, rtol=1e-6)
    probs = jnp.exp(matching_log_probs(cosine_attention(q, s), jnp.arange(9) % 3))
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)


def test_one_hot_embeddings_reduce_to_nearest_neighbour():
    # Identity "embedding" of one-hot inputs: cos = 1 for the matching support
    # example, 0 otherwise; a sharp softmax picks its label.
    learner = matching(lambda p, x: x, lambda k: {}, scale=50.0)
    rng = np.random.default_rng(0)
    dims = rng.permutation(12)[:8]
    support_x = jax.nn.one_hot(dims, 12)
    support_y = jnp.asarray([0, 1, 2, 3, 0, 1, 2, 3])
    which = rng.integers(0, 8, size=10)
    query_x = support_x[which]
    params = learner.init(jax.random.PRNGKey(0))
    logp = learner.predict(learner.adapt(params, support_x, support_y), query_x)
    np.testing.assert_array_equal(jnp.argmax(logp, -1), support_y[which])
    np.testing.assert_allclose(jnp.exp(logp[jnp.arange(10), support_y[which]]), 1.0, atol=1e-6)
    # Nearest neighbour in cosine similarity for generic inputs, too.
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    sx, qx = jax.random.normal(k1, (8, 6)), jax.random.normal(k2, (20, 6))
    learner = matching(lambda p, x: x, lambda k: {}, scale=1e4)
    logp = learner.predict(learner.adapt(params, sx, support_y), qx)
    cos = (qx / jnp.linalg.norm(qx, axis=1, keepdims=True)) @ (
        sx / jnp.linalg.norm(sx, axis=1, keepdims=True)
    ).T
    np.testing.assert_array_equal(jnp.argmax(logp, -1), support_y[jnp.argmax(cos, -1)])


def test_invariant_to_support_order_and_equivariant_to_labels():
    learner = matching(*tiny_conv())
    f = logits_fn(learner)
    params = learner.init(jax.random.PRNGKey(0))
    sx, sy, qx, _ = fewshot_sampler(4, 2, 3).sample(jax.random.PRNGKey(2), tiny_data())
    base = f(params, sx, sy, qx)[:, :4]
    perm = np.random.default_rng(0).permutation(8)
    np.testing.assert_allclose(f(params, sx[perm], sy[perm], qx)[:, :4], base, atol=1e-5)
    pi = jnp.asarray([3, 1, 0, 2])
    np.testing.assert_allclose(f(params, sx, pi[sy], qx)[:, pi], base, atol=1e-5)


def test_full_context_embeddings_shapes_and_order_dependence():
    embed_fn, init_fn = tiny_conv()
    learner = matching(embed_fn, init_fn, fce_steps=2, feature_dim=16)
    params = learner.init(jax.random.PRNGKey(0))
    assert set(params) == {"embed", "fce"}
    sx, sy, qx, _ = fewshot_sampler(3, 2, 2).sample(jax.random.PRNGKey(0), tiny_data())
    f = logits_fn(learner)
    out = f(params, sx, sy, qx)
    assert out.shape == (6, 6) and np.all(np.isfinite(out[:, :3]))
    np.testing.assert_allclose(jnp.exp(out).sum(-1), 1.0, rtol=1e-5)
    # The support LSTM reads the support set in order (as in the paper).
    perm = jnp.asarray([5, 4, 3, 2, 1, 0])
    assert not np.allclose(f(params, sx[perm], sy[perm], qx), out, atol=1e-6)


@pytest.mark.slow
def test_conformance_finite_differences_float64():
    with jax.enable_x64(True):
        data = tiny_data(dtype=jnp.float64)
        for fce_steps in (0, 1):
            embed_fn, init_fn = tiny_mlp64()
            learner = matching(embed_fn, init_fn, fce_steps=fce_steps, feature_dim=4)
            init64 = learner._replace(init=lambda k, i=learner.init: _cast64(i(k)))
            check_meta_learner(
                init64, fewshot_sampler(3, 2, 2), data, num_tasks=2, check_fd=True, fd_directions=1
            )


def _cast64(tree):
    from mamlx.models import tree_cast

    return tree_cast(tree, jnp.float64)


def test_log_probs_match_cosine_softmax_reference_for_non_unit_embeddings():
    # Identity embedding of random inputs with norms far from one: the attention
    # must normalise both the query and the support embeddings.
    rng = np.random.default_rng(0)
    sx = 3.0 * rng.normal(size=(7, 6))
    qx = 3.0 * rng.normal(size=(5, 6))
    sy = np.array([0, 1, 2, 0, 1, 2, 2])
    scale = 2.5
    learner = matching(lambda p, x: x, lambda k: {}, scale=scale)
    params = learner.init(jax.random.PRNGKey(0))
    logp = np.asarray(
        logits_fn(learner)(params, jnp.asarray(sx, jnp.float32), sy, jnp.asarray(qx, jnp.float32))
    )
    unit_q = qx / np.linalg.norm(qx, axis=1, keepdims=True)
    unit_s = sx / np.linalg.norm(sx, axis=1, keepdims=True)
    z = scale * unit_q @ unit_s.T
    att = np.exp(z - z.max(1, keepdims=True))
    att /= att.sum(1, keepdims=True)
    want = np.log(np.stack([att[:, sy == c].sum(1) for c in range(3)], 1))
    assert logp.shape == (5, 7)
    np.testing.assert_allclose(logp[:, :3], want, rtol=1e-5, atol=1e-5)
    assert np.all(np.isneginf(logp[:, 3:]))
