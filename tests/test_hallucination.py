"""Hallucination (Wang et al. 2018): shapes, noise, ProtoNet special case, conformance."""

import jax
import jax.numpy as jnp
import numpy as np
from metric_helpers import logits_fn, tiny_conv, tiny_data, tiny_mlp64

from mamlx.algorithms import hallucinate, hallucination, protonet
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
