"""Every sampler satisfies the one Sampler protocol that fit and evaluate call."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mamlx.algorithms.siamese import pair_sampler
from mamlx.tasks import Sampler, fewshot_sampler, sinusoid, vmap_sample

DATA = jax.random.uniform(jax.random.key(3), (12, 20, 8, 8, 1))

SAMPLERS = {
    "fewshot": (fewshot_sampler(5, 1, 3), DATA),
    "fewshot-rotate": (fewshot_sampler(4, 2, 2, rotate=True), DATA),
    "fewshot-uint8": (fewshot_sampler(3, 1, 1), (DATA * 255).astype(jnp.uint8)),
    "sinusoid": (sinusoid(5, 7), None),
    "pairs": (pair_sampler(6), DATA),
    "pairs-rotate": (pair_sampler(4, rotate=True), DATA),
}


@pytest.mark.parametrize("name", SAMPLERS)
def test_sampler_satisfies_protocol(name):
    sampler, _ = SAMPLERS[name]
    assert isinstance(sampler, Sampler)


def test_protocol_needs_both_methods():
    class OnlyBatch:
        def sample_batch(self, key, data, num_tasks):
            return None

    assert not isinstance(OnlyBatch(), Sampler)
    assert not isinstance(object(), Sampler)


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("n", [1, 3])
def test_sample_batch_is_vmap_of_sample_over_split_keys(name, n):
    sampler, data = SAMPLERS[name]
    key = jax.random.key(7)
    batch = sampler.sample_batch(key, data, n)
    one = sampler.sample(key, data)
    assert jax.tree.structure(batch) == jax.tree.structure(one)
    for b, o in zip(jax.tree.leaves(batch), jax.tree.leaves(one), strict=True):
        assert b.shape == (n, *o.shape) and b.dtype == o.dtype
    # The documented keys: task i is sample(split(key, n)[i], data).
    keys = jax.random.split(key, n)
    for i in range(n):
        task = sampler.sample(keys[i], data)
        for b, t in zip(jax.tree.leaves(batch), jax.tree.leaves(task), strict=True):
            np.testing.assert_allclose(b[i], t, rtol=1e-6, atol=1e-6)
    # Compiled (num_tasks static), it draws the same tasks, to float32 round-off of the
    # compiled sine (measured 3.3e-6 on a value of 1.74 with XLA's older fusion emitters).
    jitted = jax.jit(sampler.sample_batch, static_argnums=2)(key, data, n)
    for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(batch), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", SAMPLERS)
def test_sample_batch_rejects_bad_counts(name):
    sampler, data = SAMPLERS[name]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="num_tasks must be an integer >= 1"):
            sampler.sample_batch(jax.random.key(0), data, bad)


def test_vmap_sample_shares_data():
    def draw(key, data):
        return {"x": jax.random.normal(key, (2,)) + data["offset"]}

    out = vmap_sample(draw, jax.random.key(1), {"offset": jnp.float32(10.0)}, 5)
    assert out["x"].shape == (5, 2) and float(out["x"].min()) > 5.0
