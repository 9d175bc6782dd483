"""Tests for the on-device N-way K-shot sampler: episode invariants over many tasks."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mamlx.episodes import Episode, check_episode
from mamlx.tasks import fewshot_sampler

C, E, H = 12, 7, 6  # classes, examples per class, image side
TASKS = 64


@functools.lru_cache
def _jitted(ways, shots, queries, rotate):
    """Sampler plus jitted sample / sample_batch, shared so each compiles once per module."""
    sampler = fewshot_sampler(ways, shots, queries, rotate=rotate)
    return sampler, jax.jit(sampler.sample), jax.jit(sampler.sample_batch, static_argnums=2)


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(0).random((C, E, H, H, 1), dtype=np.float32)


@pytest.fixture(scope="module")
def lookup(data):
    """Map image bytes -> (class, example, quarter turns) for every rotation of every image."""
    table = {}
    for c in range(C):
        for e in range(E):
            for k in range(4):
                table[np.rot90(data[c, e], k, axes=(0, 1)).tobytes()] = (c, e, k)
    assert len(table) == C * E * 4  # all distinct, so identification is unambiguous
    return table


def _identify(lookup, images):
    return [lookup[np.asarray(img, np.float32).tobytes()] for img in images]


def _check_task(lookup, ep, ways, shots, queries, rotate):
    sx, sy, qx, qy = (np.asarray(a) for a in ep)
    assert sx.shape == (ways * shots, H, H, 1) and qx.shape == (ways * queries, H, H, 1)
    assert sy.dtype == np.int32 and qy.dtype == np.int32
    assert sorted(np.unique(sy).tolist()) == list(range(ways))
    assert np.all(np.bincount(sy, minlength=ways) == shots)
    assert np.all(np.bincount(qy, minlength=ways) == queries)
    s_src, q_src = _identify(lookup, sx), _identify(lookup, qx)
    label_class = {}
    for (c, _e, k), y in zip(s_src + q_src, np.concatenate([sy, qy]), strict=True):
        # One class per label, consistent between support and query.
        assert label_class.setdefault(int(y), (c, k)) == (c, k)
        if not rotate:
            assert k == 0
    assert len(set(label_class.values())) == ways  # N distinct (rotated) classes
    examples = s_src + q_src
    assert len(set(examples)) == len(examples)  # no example twice, none in both sets
    return label_class


CONFIGS = [(C, 3, 4, False), (20, 2, 3, True)]  # all classes; rotations, more ways than C


@pytest.mark.parametrize("ways,shots,queries,rotate", CONFIGS)
def test_episode_invariants_over_many_tasks(data, lookup, ways, shots, queries, rotate):
    _, _, batch_fn = _jitted(ways, shots, queries, rotate)
    batch = batch_fn(jax.random.key(1), data, TASKS)
    check_episode(batch, batched=True)
    batch = jax.tree.map(np.asarray, batch)
    seen, perms = set(), set()
    for t in range(TASKS):
        ep = Episode(*(a[t] for a in batch))
        label_class = _check_task(lookup, ep, ways, shots, queries, rotate)
        seen |= set(label_class.values())
        perms.add(tuple(ep.support_y[::shots].tolist()))  # labels of the class blocks in order
    # Over many tasks every (rotated) class shows up, and each task draws a fresh label
    # permutation (two equal ones among 64 draws of 12! or 20! would be a broken shuffle).
    assert len(seen) == C * (4 if rotate else 1)
    assert len(perms) == TASKS


def test_rotation_direction():
    # One class, one asymmetric example: the 4 classes are its 4 rot90 rotations.
    img = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4, 1)
    ep = jax.jit(fewshot_sampler(4, 1, 0, rotate=True).sample)(jax.random.key(0), img)
    rotations = [np.rot90(img[0, 0], k, axes=(0, 1)) for k in range(4)]
    matched = sorted(
        next(k for k in range(4) if np.array_equal(x, rotations[k]))
        for x in np.asarray(ep.support_x)
    )
    assert matched == [0, 1, 2, 3]


def test_same_key_same_episode_different_keys_differ(data):
    _, sample, batch_fn = _jitted(*CONFIGS[1])
    a, b = sample(jax.random.key(7), data), sample(jax.random.key(7), data)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    c = sample(jax.random.key(8), data)
    assert not np.array_equal(a.support_x, c.support_x)
    # sample_batch is vmap(sample) over split keys.
    batch = batch_fn(jax.random.key(7), data, TASKS)
    keys = jax.random.split(jax.random.key(7), TASKS)
    for t in (0, TASKS - 1):
        for x, y in zip(sample(keys[t], data), batch, strict=True):
            np.testing.assert_array_equal(x, y[t])
    assert not np.array_equal(batch.support_x[0], batch.support_x[1])


def test_uint8_input_becomes_float32_in_unit_interval(data):
    u8 = (data * 255).astype(np.uint8)
    _, sample, _ = _jitted(*CONFIGS[0])
    ep = sample(jax.random.key(0), u8)
    assert ep.support_x.dtype == jnp.float32
    assert 0.0 <= float(ep.support_x.min()) and float(ep.support_x.max()) <= 1.0
    ref = sample(jax.random.key(0), u8.astype(np.float32) / 255)
    np.testing.assert_allclose(ep.query_x, ref.query_x, rtol=1e-6)


def test_integer_dtypes_other_than_uint8_are_rejected():
    # int64 0..255 (numpy arithmetic) used to come out near 1e-7, int8 negative.
    img = np.random.default_rng(0).integers(0, 256, (5, 20, 8, 8, 3))
    sampler = fewshot_sampler(2, 1, 1)
    for dtype in (np.int64, np.int32, np.int16, np.int8, np.uint16):
        with pytest.raises(ValueError, match=f"got dtype {np.dtype(dtype).name}.*uint8"):
            sampler.sample(jax.random.key(0), img.astype(dtype))
    ep = jax.jit(sampler.sample)(jax.random.key(0), img.astype(np.uint8))
    ref = sampler.sample(jax.random.key(0), img.astype(np.float32) / 255)
    np.testing.assert_allclose(ep.support_x, ref.support_x, rtol=1e-6)
    assert float(ep.support_x.max()) > 0.5


def test_works_for_rgb_non_square():
    rgb = np.random.default_rng(1).random((6, 9, 5, 8, 3), dtype=np.float32)
    ep = jax.jit(fewshot_sampler(6, 4, 5).sample)(jax.random.key(0), rgb)
    assert ep.support_x.shape == (24, 5, 8, 3) and ep.query_x.shape == (30, 5, 8, 3)


def test_bad_inputs_raise_clear_errors(data):
    with pytest.raises(ValueError, match="ways=13 is more than the 12 classes"):
        fewshot_sampler(13, 1, 1).sample(jax.random.key(0), data)
    with pytest.raises(ValueError, match="49 is more than the 48 classes"):
        fewshot_sampler(49, 1, 1, rotate=True).sample(jax.random.key(0), data)
    with pytest.raises(ValueError, match="shots \\+ queries = 3 \\+ 5 = 8 is more than the 7"):
        jax.jit(fewshot_sampler(2, 3, 5).sample)(jax.random.key(0), data)
    with pytest.raises(ValueError, match="no classes"):
        fewshot_sampler(1, 1, 1).sample(jax.random.key(0), data[:0])
    with pytest.raises(ValueError, match="classes, examples, H, W, C"):
        fewshot_sampler(1, 1, 1).sample(jax.random.key(0), data[..., 0])
    with pytest.raises(ValueError, match="square"):
        fewshot_sampler(2, 1, 1, rotate=True).sample(jax.random.key(0), data[:, :, :, :4])
    for bad in ((0, 1, 1), (2, 0, 1), (2, 1, -1), (2.5, 1, 1), (None, 1, 1), (True, 1, 1)):
        with pytest.raises(ValueError, match="must be an integer"):
            fewshot_sampler(*bad)
    for num_tasks in (0, -1, 1.5):
        with pytest.raises(ValueError, match="num_tasks must be an integer >= 1"):
            fewshot_sampler(2, 1, 1).sample_batch(jax.random.key(0), data, num_tasks)
    assert fewshot_sampler(np.int64(3), np.int32(1), np.int64(2)).ways == 3
    assert fewshot_sampler(jnp.int32(3), 1, 1).ways == 3  # concrete JAX integers too
    with pytest.raises(ValueError, match="ways must be an integer"):
        fewshot_sampler(jnp.bool_(True), 1, 1)
