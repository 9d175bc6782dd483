"""A short real-Omniglot run: ProtoNet 5-way 1-shot far above its untrained embedding."""

import jax
import jax.numpy as jnp
import optax
import pytest

from mamlx import protonet
from mamlx.evaluation import make_evaluator
from mamlx.models import ConvEmbedding, model
from mamlx.tasks import fewshot_sampler, load_omniglot, omniglot_split
from mamlx.train import fit, init_state


@pytest.mark.slow
def test_protonet_5way_1shot_omniglot_beats_its_untrained_embedding(omniglot_dir):
    split = omniglot_split(load_omniglot("npz", omniglot_dir))
    train, test = jnp.asarray(split.train), jnp.asarray(split.test)
    # Conv-4 with 8 filters per block (28x28 -> 8-d embedding), 200 Adam steps of
    # one 5-way 1-shot episode (5 queries per class) on the 1100 Vinyals training
    # characters with rotations; 50 test tasks on the 423 held-out characters.
    learner = protonet(*model(lambda r: ConvEmbedding(1, filters=8, rngs=r)))
    opt = optax.adam(1e-3)
    untrained = init_state(learner, opt, jax.random.PRNGKey(0))
    state = fit(
        learner,
        fewshot_sampler(5, 1, 5, rotate=True),
        opt,
        steps=200,
        meta_batch=1,
        state=untrained,
        data=train,
        chunk=200,
        progress=False,
    )
    evaluator = make_evaluator(learner, fewshot_sampler(5, 1, 5))

    def accuracy(params):  # the same 50 test tasks for both (two runs of 50: the old one 100)
        return evaluator(params, test, key=jax.random.PRNGKey(1), num_tasks=50)[None]["accuracy"]

    (before, _), (after, ci) = accuracy(untrained.params), accuracy(state.params)
    # Measured (this configuration, 2 loaded CPU cores), trained / untrained with init seeds
    # 0 (this test), 1, 2: 59.2 / 35.3, 48.9 / 30.1, 61.8 / 41.6 % (chance 20 %); on 100 tasks
    # 59.9 / 35.1, 51.3 / 32.0, 64.0 / 44.6 %. A random Conv-4 embedding alone reaches 45 %
    # (seed 2, 100 tasks): the former check, accuracy > 42 %, held for it.
    assert after > before + 0.10, f"ProtoNet {after:.3f} ± {ci:.3f}, untrained {before:.3f}"
