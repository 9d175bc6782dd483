"""Hallucination (Wang et al. 2018): shapes, noise, ProtoNet special case, conformance."""

import jax
import jax.numpy as jnp
import numpy as np
from metric_helpers import logits_fn, tiny_conv, tiny_data, tiny_mlp64

from mamlx import hallucination, protonet
from mamlx.algorithms import hallucinate
from mamlx.models import MLP, model, tree_cast
from mamlx.tasks import fewshot_sampler
from mamlx.testing import check_meta_learner


def test_hallucinated_examples_have_the_seed_shape_and_change_with_noise():
    gen_fn, gen_init = model(lambda r: MLP((16 + 3, 8, 8, 16), rngs=r))
    params = gen_init(jax.random.PRNGKey(0))
    seeds = jax.random.normal(jax.random.PRNGKey(1), (5, 2, 16))
    z1, z2 = jax.random.normal(jax.random.PRNGKey(2), (2, 5, 2, 3))
    h1, h2 = hallucinate(gen_fn, params, seeds, z1), hallucinate(gen_fn, params, seeds, z2)
    assert h1.shape == seeds.shape
    assert not np.allclose(h1, h2), "hallucinations must depend on the noise"
    np.testing.assert_array_equal(h1, hallucinate(gen_fn, params, seeds, z1))


def test_learner_hallucinates_per_class_and_noise_key_matters():
    embed_fn, init_fn = tiny_conv()
    learner = hallucination(embed_fn, init_fn, feature_dim=16, num_hallucinated=3)
    params = learner.init(jax.random.PRNGKey(0))
    sx, sy, qx, _ = fewshot_sampler(4, 1, 2).sample(jax.random.PRNGKey(0), tiny_data())
    adapt = jax.jit(learner.adapt)
    a, b = (
        adapt(params, sx, sy, key=jax.random.PRNGKey(1)),
        adapt(params, sx, sy, key=jax.random.PRNGKey(2)),
    )
    assert a.hallucinated.shape == (4, 3, 16)  # (classes, M, embedding dim)
    assert not np.allclose(a.hallucinated[:4], b.hallucinated[:4])
    assert not np.allclose(a.proto.prototypes[:4], b.proto.prototypes[:4])
    # Prototype = mean of the real example and its hallucinations (1-shot: seed = that example).
    emb = jax.jit(embed_fn)(params["embed"], sx)
    for c in range(4):
        want = (emb[sy == c].sum(0) + a.hallucinated[c].sum(0)) / 4
        np.testing.assert_allclose(a.proto.prototypes[c], want, rtol=1e-5, atol=1e-5)
    # Without a key the noise comes from the episode: deterministic, finite.
    s1, s2 = adapt(params, sx, sy), adapt(params, sx, sy)
    np.testing.assert_array_equal(s1.hallucinated, s2.hallucinated)
    assert np.all(np.isfinite(jax.jit(learner.predict)(s1, qx)[:, :4]))


def test_zero_hallucinations_is_protonet():
    embed_fn, init_fn = tiny_conv()
    learner = hallucination(embed_fn, init_fn, feature_dim=16, num_hallucinated=0)
    params = learner.init(jax.random.PRNGKey(0))
    sx, sy, qx, _ = fewshot_sampler(3, 2, 3).sample(jax.random.PRNGKey(4), tiny_data())
    got = logits_fn(learner)(params, sx, sy, qx)
    want = logits_fn(protonet(embed_fn, init_fn))(params["embed"], sx, sy, qx)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_conformance_finite_differences_float64():
    with jax.enable_x64(True):
        learner = hallucination(*tiny_mlp64(), feature_dim=4, num_hallucinated=2)
        learner = learner._replace(init=lambda k, i=learner.init: tree_cast(i(k), jnp.float64))
        data = tiny_data(dtype=jnp.float64)
        check_meta_learner(
            learner, fewshot_sampler(3, 1, 2), data, num_tasks=2, check_fd=True, fd_directions=1
        )


def test_seeds_are_drawn_from_their_own_class():
    # Identity embedding and a zeroed generator: G(e, z) = e + 0, so every
    # hallucination is exactly its seed's embedding, which must be a support
    # example of its own class (K = 3 shots, so seeds are not determined).
    learner = hallucination(lambda p, x: x, lambda k: {}, feature_dim=5, num_hallucinated=4)
    params = learner.init(jax.random.PRNGKey(0))
    params = {**params, "generator": jax.tree.map(jnp.zeros_like, params["generator"])}
    rng = np.random.default_rng(0)
    sx = rng.normal(size=(12, 5)).astype(np.float32)
    sy = rng.permutation(np.arange(12) % 4)
    adapt = jax.jit(learner.adapt)
    used = set()
    for k in range(3):
        fake = np.asarray(adapt(params, sx, sy, key=jax.random.PRNGKey(k)).hallucinated)
        assert fake.shape == (12, 4, 5)
        for c in range(4):
            for j in range(4):
                dist = np.abs(sx - fake[c, j]).max(-1)
                i = int(np.argmin(dist))
                assert dist[i] < 1e-6, "a hallucination with a zero generator must equal a seed"
                assert sy[i] == c, f"class {c} hallucination seeded from class {sy[i]}"
                used.add(i)
        np.testing.assert_array_equal(fake[4:], 0.0)  # absent classes hallucinate nothing
    assert len(used) > 4, "seeds must vary among the class's support examples"


def test_predictions_are_invariant_to_the_order_of_the_support_set():
    # Permuting the support examples together with their labels is the same task:
    # the hallucinated seeds, noise, prototypes, predictions and loss must not change.
    from mamlx import Episode

    embed_fn, init_fn = tiny_conv()
    learner = hallucination(embed_fn, init_fn, feature_dim=16, num_hallucinated=3)
    params = learner.init(jax.random.PRNGKey(0))
    sx, sy, qx, qy = fewshot_sampler(4, 3, 2).sample(jax.random.PRNGKey(3), tiny_data())
    adapt, predict = jax.jit(learner.adapt), jax.jit(learner.predict)
    loss = jax.jit(learner.outer_loss)
    for key in (None, jax.random.PRNGKey(7)):
        ref = adapt(params, sx, sy, key=key)
        ref_logits = predict(ref, qx)
        ref_loss, _ = loss(params, Episode(sx, sy, qx, qy))
        for seed in range(3):
            perm = np.random.default_rng(seed).permutation(sx.shape[0])
            got = adapt(params, sx[perm], sy[perm], key=key)
            np.testing.assert_allclose(got.hallucinated, ref.hallucinated, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(
                got.proto.prototypes, ref.proto.prototypes, rtol=1e-5, atol=1e-5
            )
            np.testing.assert_allclose(
                predict(got, qx)[:, :4], ref_logits[:, :4], rtol=1e-5, atol=1e-5
            )
            got_loss, _ = loss(params, Episode(sx[perm], sy[perm], qx, qy))
            np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-5)
