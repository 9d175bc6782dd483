"""The optional PRNG key of the learner contract (issue 18): ``adapt(..., key=None)``,
``outer_loss(..., key=None)``, ``meta_grad(..., key=None)``, passed by ``fit`` and
``evaluate`` without changing the sampled tasks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mamlx import (
    Episode,
    MetaLearner,
    evaluate,
    fit,
    hallucination,
    init_state,
    make_step,
    maml,
    protonet,
)
from mamlx.algorithms import gradient_meta_grad, learner_key
from mamlx.models import MLP, model

WAYS, QUERIES, TASKS, DIM = 3, 2, 2, 8


def flat_mlp():
    """A small MLP of flattened 8x8 images to ``DIM`` outputs (compiles fast)."""
    apply_fn, init_fn = model(lambda r: MLP((64, 16, DIM), rngs=r))
    return (lambda p, x: apply_fn(p, x.reshape(x.shape[0], -1))), init_fn


class Images:
    """``WAYS``-way 1-shot episodes of 8x8 images, a cheap function of the key (no data set,
    and no threefry to compile, which is slow on XLA:CPU)."""

    def sample(self, key, data=None):
        del data
        seed = jax.random.key_data(key).astype(jnp.float32)
        wave = lambda n, phase: jnp.sin(
            jnp.arange(n * 64.0).reshape(n, 8, 8, 1) * (0.1 + seed[1] % 7) + seed[0] + phase
        )
        labels = jnp.arange(WAYS)
        return Episode(wave(WAYS, 0.0), labels, wave(WAYS * QUERIES, 1.0), labels.repeat(QUERIES))

    def sample_batch(self, key, data, num_tasks):
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(num_tasks))
        return jax.vmap(self.sample, (0, None))(keys, data)


# Compiled (eager vmapped ops are slow to dispatch): a batch from one key, a task per key.
images = jax.jit(lambda key: Images().sample_batch(key, None, TASKS))
tasks_of = jax.jit(jax.vmap(Images().sample))


class Fixed:
    """A sampler that returns the same task batch whatever the key."""

    def __init__(self, episodes):
        self.episodes = episodes

    def sample_batch(self, key, data, num_tasks):
        del key, data
        return jax.tree.map(lambda x: x[:num_tasks], self.episodes)


def trees_equal(a, b):
    return all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


@pytest.fixture(scope="module")
def embed():
    return flat_mlp()


@pytest.fixture(scope="module")
def hall(embed):
    """A tiny hallucination learner, its params and ``adapt_predict(params, episodes,
    keys) -> (hallucinated, logits)`` over a batch of tasks, compiled once."""
    learner = hallucination(*embed, feature_dim=DIM, num_hallucinated=2)

    def one(params, episode, key):
        state = learner.adapt(params, episode.support_x, episode.support_y, key=key)
        return state.hallucinated, learner.predict(state, episode.query_x)

    adapt_predict = jax.jit(jax.vmap(one, (None, 0, 0)))
    return learner, learner.init(jax.random.PRNGKey(0)), adapt_predict


def test_hallucination_noise_comes_from_the_key(hall):
    _, params, adapt_predict = hall
    same = tasks_of(jnp.stack([jax.random.PRNGKey(1)] * 3))  # one task, three times
    keys = jnp.stack([jax.random.PRNGKey(7), jax.random.PRNGKey(7), jax.random.PRNGKey(8)])
    fake, _ = adapt_predict(params, same, keys)
    assert fake.shape == (3, WAYS, 2, DIM)
    np.testing.assert_array_equal(fake[0], fake[1])  # same key, same hallucinations
    assert not np.allclose(fake[0], fake[2])  # another key, others


def test_fit_gives_the_learner_a_fresh_key_every_step(hall):
    base = hall[0]

    def outer_loss(meta_params, episode, key=None):  # reports its key and its noise
        state = base.adapt(meta_params, episode.support_x, episode.support_y, key=key)
        loss, metrics = base.outer_loss(meta_params, episode, key=key)
        word = jax.random.key_data(key).ravel()[0].astype(jnp.float32)
        return loss, {**metrics, "noise": jnp.sum(state.hallucinated), "key": word}

    learner = base._replace(outer_loss=outer_loss, meta_grad=gradient_meta_grad(outer_loss))
    episodes = images(jax.random.PRNGKey(1))
    opt = optax.sgd(0.0)  # the params stay put and the tasks too: only the key changes
    records = []
    fit(
        learner,
        Fixed(episodes),
        opt,
        steps=3,
        meta_batch=TASKS,
        state=init_state(learner, opt, jax.random.PRNGKey(0)),
        chunk=1,
        progress=False,
        on_chunk=lambda s, r: records.append(r),
    )
    assert len({r["key"] for r in records}) == 3, records
    assert len({r["noise"] for r in records}) == 3, records
    assert len({r["loss"] for r in records}) == 3, records


def test_make_step_samples_the_tasks_it_sampled_before_keys():
    def meta_grad(params, episodes, key=None):  # shows what the step passes it
        return jax.tree.map(jnp.zeros_like, params), {"episodes": episodes, "key": key}

    learner = MetaLearner(lambda key: {"w": jnp.zeros(2)}, None, None, None, meta_grad)
    opt = optax.sgd(0.1)
    state = init_state(learner, opt, jax.random.PRNGKey(0))
    new, seen = jax.jit(make_step(learner, Images(), opt, meta_batch=TASKS))(state, None)
    key, k_tasks = jax.random.split(state.key)  # what the step did before keys
    assert trees_equal(seen["episodes"], images(k_tasks))
    np.testing.assert_array_equal(new.key, key)
    np.testing.assert_array_equal(seen["key"], learner_key(state.key))
    assert not any(np.array_equal(seen["key"], k) for k in (key, k_tasks))


def without_keys(learner):
    """The learner as written before keys: its adapt and meta_grad take none."""
    return learner._replace(
        adapt=lambda p, x, y, steps=None: learner.adapt(p, x, y, steps),
        meta_grad=lambda p, e: learner.meta_grad(p, e),
    )


def test_deterministic_learners_ignore_the_key(embed):
    key = jax.random.PRNGKey(2)
    batch = images(jax.random.PRNGKey(1))
    task = jax.tree.map(lambda x: x[0], batch)
    # MAML on a tiny MLP, tasks mapped with lax.map (per-task keys through the scan).
    learner = maml(*embed, inner_lr=0.1, task_map="map")
    params = learner.init(jax.random.PRNGKey(0))
    both = jax.jit(lambda p, b, k: (learner.meta_grad(p, b), learner.meta_grad(p, b, k)))
    plain, keyed = both(params, batch, key)
    assert trees_equal(plain, keyed)
    # ProtoNet, tasks vmapped: meta_grad, outer_loss and adapt.
    proto = protonet(*embed)

    def outputs(p, b, t, k=None):
        logits = proto.predict(proto.adapt(p, t.support_x, t.support_y, key=k), t.query_x)
        return proto.meta_grad(p, b, key=k), proto.outer_loss(p, t, key=k), logits

    both = jax.jit(lambda p, b, t, k: (outputs(p, b, t), outputs(p, b, t, k)))
    plain, keyed = both(params, batch, task, key)
    assert trees_equal(plain, keyed)


def test_evaluate_adapts_each_task_with_its_own_key(hall):
    learner, params, adapt_predict = hall
    key, n = jax.random.PRNGKey(2), 3
    got = evaluate(learner, params, Images(), key=key, num_tasks=n, batch_size=n)[None]
    # Task i is sampled from fold_in(key, i) and adapted with learner_key of that key
    # (so neither depends on the batch size).
    task_keys = jnp.stack([jax.random.fold_in(key, i) for i in range(n)])
    episodes = tasks_of(task_keys)
    _, logits = adapt_predict(params, episodes, jnp.stack([learner_key(k) for k in task_keys]))
    logits, labels = np.asarray(logits, np.float64), np.asarray(episodes.query_y)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    loss = -np.take_along_axis(log_p, labels[..., None], -1).mean()
    accuracy = (logits.argmax(-1) == labels).mean()
    np.testing.assert_allclose(got["loss"][0], loss, rtol=1e-5)
    np.testing.assert_allclose(got["accuracy"][0], accuracy)
