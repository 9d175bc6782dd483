"""Sine-wave task distribution and the Episode type."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mamlx import Episode, check_episode
from mamlx.tasks import sinusoid


def test_same_key_same_task_different_keys_different_tasks():
    s = sinusoid(5)
    a, b = s.sample(jax.random.PRNGKey(0)), s.sample(jax.random.PRNGKey(0))
    c = s.sample(jax.random.PRNGKey(1))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(a.support_x, c.support_x)


def test_ranges_shapes_and_targets_follow_the_paper():
    s = sinusoid(10, queries=7)
    keys = jax.random.split(jax.random.PRNGKey(0), 2000)
    amp, phase = jax.vmap(s.sample_params)(keys)
    assert 0.1 <= float(amp.min()) and float(amp.max()) <= 5.0
    assert 0.0 <= float(phase.min()) and float(phase.max()) <= math.pi
    # uniform: means close to the interval midpoints
    assert abs(float(amp.mean()) - 2.55) < 0.15 and abs(float(phase.mean()) - math.pi / 2) < 0.1
    eps = jax.jit(lambda k: s.sample_batch(k, None, 2000))(jax.random.PRNGKey(0))
    assert eps.support_x.shape == (2000, 10, 1) and eps.query_x.shape == (2000, 7, 1)
    assert float(eps.support_x.min()) >= -5.0 and float(eps.support_x.max()) <= 5.0
    # every task is y = a sin(x + b) = (a cos b) sin x + (a sin b) cos x: recover a, b by least
    # squares from its 17 points and check the fit is exact and (a, b) lie in the paper's ranges
    x = np.concatenate([eps.support_x, eps.query_x], 1)[..., 0].astype(np.float64)
    y = np.concatenate([eps.support_y, eps.query_y], 1)[..., 0].astype(np.float64)
    basis = np.stack([np.sin(x), np.cos(x)], -1)
    coef = np.stack([np.linalg.lstsq(basis[i], y[i], rcond=None)[0] for i in range(len(x))])
    np.testing.assert_allclose(np.einsum("tnk,tk->tn", basis, coef), y, atol=1e-4)
    a, b = np.hypot(coef[:, 0], coef[:, 1]), np.arctan2(coef[:, 1], coef[:, 0])
    assert a.min() >= 0.1 - 1e-4 and a.max() <= 5.0 + 1e-4
    assert b.min() >= -1e-4 and b.max() <= math.pi + 1e-4


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_shots_raise(bad):
    with pytest.raises(ValueError, match="shots"):
        sinusoid(bad)


def test_bad_ranges_and_counts_raise():
    with pytest.raises(ValueError, match="amplitude"):
        sinusoid(5, amplitude=(5.0, 0.1))
    with pytest.raises(ValueError, match="queries"):
        sinusoid(5, queries=0)
    for bad in (0, -1, 2.5, None, True):
        with pytest.raises(ValueError, match="num_tasks must be an integer >= 1"):
            sinusoid(5).sample_batch(jax.random.PRNGKey(0), None, bad)
    with pytest.raises(ValueError, match="shots"):
        sinusoid(None)
    # numpy integers from a sweep such as np.arange(1, 11) are integers.
    ep = sinusoid(np.int64(4), queries=np.int32(3)).sample_batch(jax.random.PRNGKey(0), None, 2)
    assert ep.support_x.shape == (2, 4, 1) and ep.query_x.shape == (2, 3, 1)


def test_check_episode_names_the_mismatch():
    ok = Episode(jnp.zeros((5, 1)), jnp.zeros((5, 1)), jnp.zeros((3, 1)), jnp.zeros((3, 1)))
    check_episode(ok)
    with pytest.raises(ValueError, match="support_x has 5 examples but support_y has 4"):
        check_episode(ok._replace(support_y=jnp.zeros((4, 1))))
    with pytest.raises(ValueError, match="input shapes"):
        check_episode(ok._replace(query_x=jnp.zeros((3, 2))))
    with pytest.raises(ValueError, match="task axis"):
        check_episode(
            jax.tree.map(lambda a: a[None], ok)._replace(query_y=jnp.zeros((2, 3, 1))), batched=True
        )
