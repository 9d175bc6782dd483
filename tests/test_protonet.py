"""Prototypical Networks: prototypes, distances against numpy, symmetries, conformance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from metric_helpers import logits_fn, tiny_conv, tiny_data, tiny_mlp64

from mamlx import protonet
from mamlx.algorithms import prototypes
from mamlx.algorithms.metric_based import squared_distances
from mamlx.tasks import fewshot_sampler
from mamlx.testing import check_meta_learner


@pytest.fixture(scope="module")
def proto():
    embed_fn, init_fn = tiny_conv()
    learner = protonet(embed_fn, init_fn)
    return learner, jax.jit(embed_fn), learner.init(jax.random.PRNGKey(0)), logits_fn(learner)


@pytest.fixture(scope="module")
def episode():
    return fewshot_sampler(4, 3, 5).sample(jax.random.PRNGKey(3), tiny_data())


def test_prototypes_are_per_class_means():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(12, 5)).astype(np.float32)
    labels = rng.permutation(np.repeat(np.arange(4), 3))
    got = np.asarray(prototypes(jnp.asarray(emb), jnp.asarray(labels)))
    assert got.shape == (12, 5)
    for c in range(4):
        np.testing.assert_allclose(got[c], emb[labels == c].mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got[4:], 0.0)  # absent classes


def test_adapt_prototypes_equal_class_means_of_embeddings(proto, episode):
    learner, embed_fn, params, _ = proto
    state = jax.jit(learner.adapt)(params, episode.support_x, episode.support_y)
    emb = np.asarray(embed_fn(params, episode.support_x))
    y = np.asarray(episode.support_y)
    for c in range(4):
        np.testing.assert_allclose(state.prototypes[c], emb[y == c].mean(0), rtol=1e-5, atol=1e-6)


def test_logits_are_negative_squared_distances_numpy_reference(proto, episode):
    _, embed_fn, params, f = proto
    logits = np.asarray(f(params, *episode[:3]), np.float64)
    s = np.asarray(embed_fn(params, episode.support_x), np.float64)
    q = np.asarray(embed_fn(params, episode.query_x), np.float64)
    y = np.asarray(episode.support_y)
    ways = 4
    want = np.empty((len(q), ways))
    for i in range(len(q)):  # slow loops on purpose
        for c in range(ways):
            p = s[y == c].mean(0)
            want[i, c] = -sum((q[i, j] - p[j]) ** 2 for j in range(len(p)))
    np.testing.assert_allclose(logits[:, :ways], want, rtol=1e-4, atol=1e-4)
    assert np.all(np.isneginf(logits[:, ways:])), "classes without support must be -inf"
    d = squared_distances(jnp.ones((2, 3)), jnp.ones((2, 3)))
    np.testing.assert_array_equal(d, 0.0)


def test_invariant_to_support_permutations_and_equivariant_to_labels(proto, episode):
    _, _, params, f = proto
    sx, sy, qx, _ = episode
    base = f(params, sx, sy, qx)[:, :4]
    rng = np.random.default_rng(1)
    # Permute examples within each class (support is grouped by class: 3 shots).
    within = np.concatenate([3 * c + rng.permutation(3) for c in range(4)])
    # Permute the whole support order.
    anyorder = rng.permutation(len(sy))
    for perm in (within, anyorder):
        out = f(params, sx[perm], sy[perm], qx)[:, :4]
        np.testing.assert_allclose(out, base, rtol=1e-5, atol=1e-4)
    # Relabel classes with a permutation pi: column pi[c] of the new logits is column c.
    pi = jnp.asarray([2, 0, 3, 1])
    out = f(params, sx, pi[sy], qx)
    np.testing.assert_allclose(out[:, pi], base, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(jnp.argmax(out, -1), pi[jnp.argmax(base, -1)])


def test_ways_are_inferred_from_the_episode(proto):
    # The same learner (and compiled shapes aside, the same params) at another ways.
    _, _, params, f = proto
    ep = fewshot_sampler(6, 1, 2).sample(jax.random.PRNGKey(6), tiny_data())
    logits = f(params, *ep[:3])
    assert logits.shape == (12, 6) and np.all(np.isfinite(logits))


def test_conformance_finite_differences_float64():
    with jax.enable_x64(True):
        learner = protonet(*tiny_mlp64())
        data = tiny_data(dtype=jnp.float64)
        check_meta_learner(
            learner, fewshot_sampler(3, 2, 2), data, num_tasks=2, check_fd=True, fd_directions=1
        )


@pytest.mark.parametrize("method", ["protonet", "matching", "relation"])
def test_out_of_range_support_labels_raise_or_give_nan_never_drop_a_class(method):
    # 1-indexed labels 1..4 for 4 classes, one shot each: class 4 would silently vanish.
    # (Score columns number the support examples, so labels must lie in [0, S).)
    episode = fewshot_sampler(4, 1, 5).sample(jax.random.PRNGKey(3), tiny_data())
    from test_relation import tiny_relation

    import mamlx

    if method == "relation":
        learner = tiny_relation()
    else:
        learner = getattr(mamlx, method)(*tiny_conv())
    params = learner.init(jax.random.PRNGKey(0))
    shifted = episode._replace(support_y=episode.support_y + 1)
    with pytest.raises(ValueError, match=r"support labels: label value\(s\) \[4\] out of range"):
        learner.predict(
            learner.adapt(params, shifted.support_x, shifted.support_y), shifted.query_x
        )
    loss, metrics = jax.jit(learner.outer_loss)(params, shifted)  # traced: no check, NaN
    assert np.isnan(loss) and float(metrics["accuracy"]) == 0.0  # NaN scores are no answer
    loss, metrics = jax.jit(learner.outer_loss)(params, episode)
    assert np.isfinite(loss) and np.isfinite(metrics["accuracy"])
