"""The learner and data-set tables: every learner builds from a configuration and trains
through ``fit``; a learner and a data set registered outside the package train and
evaluate through the CLI's path; bad configurations name the field (issue 18)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mamlx import fit, init_state, registry
from mamlx.algorithms.base import gradient_learner, learner_key
from mamlx.cli import main
from mamlx.config import FewShotConfig, SinusoidConfig, config_from_dict
from mamlx.datasets import Data, context
from mamlx.experiments import build, build_learner
from mamlx.tasks import fewshot_sampler

ALL_LEARNERS = [
    "anil",
    "arcface",
    "cosface",
    "fomaml",
    "hallucination",
    "imaml",
    "maml",
    "maml++",
    "matching",
    "meta-lstm",
    "metasgd",
    "pretrain",
    "protonet",
    "relation",
    "reptile",
    "siamese",
    "sphereface",
    "transfer",
    "triplet",
]


#: Learners whose evaluation other files test (test_fewshot.py, test_maml.py,
#: test_meta_lstm_learner.py, test_metric_omniglot.py): here only their training.
EVALUATED_ELSEWHERE = ("anil", "fomaml", "maml", "metasgd", "meta-lstm", "pretrain", "reptile")


def test_the_table_holds_every_learner_and_data_set():
    assert registry.learner_names() == ALL_LEARNERS
    assert registry.dataset_names() == ["miniimagenet", "omniglot", "sinusoid"]
    assert registry.learner_names("regression") == [
        "fomaml",
        "imaml",
        "maml",
        "maml++",
        "metasgd",
        "pretrain",
        "reptile",
    ]


# A small image data set registered from outside the package: random 16x16 "characters".
@dataclass(frozen=True, init=False)
class ToyImagesConfig(FewShotConfig):
    ways: int = 2
    queries: int = 2
    meta_batch: int = 2
    filters: int = 4
    image_size: int = 16
    task_map: str = "vmap"
    val_tasks: int = 4
    eval_tasks: int = 4
    task: str = field(default="toy-images", init=False)


def _toy_load(config: ToyImagesConfig) -> Data:
    key = jax.random.PRNGKey(config.seed)
    x = jax.random.uniform(key, (6, 4, config.image_size, config.image_size, 1))
    sampler = fewshot_sampler(config.ways, config.shots, config.queries)
    test = fewshot_sampler(config.eval_ways or config.ways, config.shots, config.queries)
    return Data(x, sampler, test, {"val": x, "test": x})


@pytest.fixture(scope="module")
def toy_images():
    import mamlx.datasets as ds

    registry.register_dataset(
        "toy-images",
        ToyImagesConfig,
        _toy_load,
        ds.image_context(lambda config: 6),  # six toy classes
        family="classification",
        channels=1,
        replace=True,
    )
    yield
    registry._DATASETS.pop("toy-images", None)


@pytest.mark.parametrize("algo", ALL_LEARNERS)
def test_every_learner_builds_from_a_config_and_trains_through_fit(algo, toy_images):
    entry = registry.get_learner(algo)
    names = entry.field_names()  # one inner step: compile time
    extra = {k: 1 for k in ("inner_steps", "eval_inner_steps") if k in names}
    if entry.network == "classifier":  # the fully connected classifier: seconds to compile
        extra["backbone"] = "mlp"
    config = ToyImagesConfig(algo=algo, steps=1, **extra)
    exp = build(config)
    state = init_state(exp.learner, exp.optimizer, jax.random.PRNGKey(0))
    before = jax.tree.leaves(state.params)
    state = fit(
        exp.learner,
        exp.sampler,
        exp.optimizer,
        steps=1,
        meta_batch=config.meta_batch,
        state=state,
        data=exp.data,
        progress=False,
    )
    assert int(state.step) == 1
    after = jax.tree.leaves(state.params)
    assert all(np.isfinite(np.asarray(a)).all() for a in after)
    assert any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    if algo in EVALUATED_ELSEWHERE:  # compile time: their evaluation is tested there
        return
    # The evaluator serves it too (the test protocol of every learner).
    from mamlx.evaluation import evaluate

    key, steps = jax.random.PRNGKey(1), config.eval_steps
    res = evaluate(
        exp.learner,
        state.params,
        exp.eval_sampler,
        exp.splits["test"],
        key=key,
        num_tasks=2,
        steps=[steps],
    )

    # The reported accuracy is the learner's own on these tasks, recomputed from its
    # predictions (task i from fold_in(key, i), adapted with learner_key of that key), and
    # those predictions are not constant: a constant model (or an evaluator reporting
    # something else) fails here, where "0 <= accuracy <= 1" passed anything.
    def predict(i):
        k = jax.random.fold_in(key, i)
        ep = exp.eval_sampler.sample(k, exp.splits["test"])
        task = exp.learner.adapt(
            state.params, ep.support_x, ep.support_y, steps=steps, key=learner_key(k)
        )
        return exp.learner.predict(task, ep.query_x), ep.query_y

    out, labels = jax.jit(jax.vmap(predict))(jnp.arange(2))
    out = np.asarray(out)[..., : config.eval_ways or config.ways]  # the task's classes
    accuracy = np.mean(np.argmax(out, -1) == np.asarray(labels))
    np.testing.assert_allclose(res[steps]["accuracy"][0], accuracy, rtol=1e-6)
    assert np.all(np.isfinite(out)) and np.ptp(out, axis=1).max() > 1e-6, "constant predictions"


def test_learner_settings_reach_the_factory(toy_images):
    """A setting given flat lands in the learner's own config and changes what is built."""
    a = ToyImagesConfig(algo="maml", inner_lr=0.05, inner_steps=2)
    assert isinstance(a.learner, registry.get_learner("maml").config)
    assert (a.inner_lr, a.learner.inner_steps) == (0.05, 2)
    ep = _toy_load(a).sampler.sample(jax.random.PRNGKey(3), _toy_load(a).train)
    params = build_learner(a).init(jax.random.PRNGKey(0))
    loss_a = build_learner(a).outer_loss(params, ep)[0]
    loss_b = build_learner(dataclasses.replace(a, inner_lr=0.4)).outer_loss(params, ep)[0]
    assert not np.isclose(float(loss_a), float(loss_b))
    # Data-set defaults for learner settings apply where the learner has them.
    assert SinusoidConfig(algo="maml").inner_lr == 0.01
    assert FewShotConfig(algo="maml").inner_lr == 0.4
    from mamlx.config import MiniImageNetConfig

    mini = MiniImageNetConfig(algo="maml")
    assert (mini.inner_lr, mini.inner_steps, mini.eval_inner_steps) == (0.01, 5, 10)


@pytest.mark.parametrize("algo", ALL_LEARNERS)
def test_configs_round_trip_through_json(algo):
    config = FewShotConfig(algo=algo, ways=3, seed=4)
    flat = json.loads(json.dumps(config.to_dict()))
    assert config_from_dict(flat) == config


def test_a_saved_flat_config_from_before_the_table_still_loads():
    old = {  # config.json of a MAML run saved by mamlx 0.1 (every learner's setting in it)
        **{k: v for k, v in FewShotConfig(algo="maml").to_dict().items()},
        "inner_opt": "sgd",
        "lstm_hidden": 20,
        "second_order": False,
    }
    assert config_from_dict(old) == FewShotConfig(algo="maml")


def test_bad_configurations_name_the_field_and_the_allowed_values():
    with pytest.raises(ValueError, match=r"unknown learner 'protomaml'.*'maml'"):
        FewShotConfig(algo="protomaml")
    with pytest.raises(ValueError, match=r"'protonet' does not take sinusoid.*'maml'"):
        SinusoidConfig(algo="protonet")
    with pytest.raises(ValueError, match=r"'inner_lr' is not a setting.*'protonet'.*'maml'"):
        FewShotConfig(algo="protonet", inner_lr=0.1)
    with pytest.raises(ValueError, match=r"'lstm_hidden'.*setting of \['meta-lstm'\]"):
        FewShotConfig(algo="maml", lstm_hidden=4)
    with pytest.raises(ValueError, match="no_such_field"):
        FewShotConfig(no_such_field=1)
    with pytest.raises(ValueError, match=r"pool='max'.*'protonet'"):
        FewShotConfig(algo="protonet", pool="max")
    with pytest.raises(ValueError, match="eval_ways=20"):
        FewShotConfig(algo="maml", ways=5, eval_ways=20)
    with pytest.raises(ValueError, match="aggregate must be one of"):
        FewShotConfig(algo="relation", aggregate="max")


def test_cli_refuses_a_bad_configuration_before_writing_anything(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "omniglot", "--algo", "protonet", "--inner-lr", "0.1", "--out", str(out)])
    err = capsys.readouterr().err
    assert "'inner_lr' is not a setting" in err and "protonet" in err
    assert not out.exists()
    with pytest.raises(SystemExit):  # argparse: not a learner for this data set
        main(["train", "sinusoid", "--algo", "protonet", "--out", str(out)])
    assert "invalid choice" in capsys.readouterr().err and not out.exists()


# A learner registered outside the package: a network plus the support residual's mean.
@dataclass(frozen=True)
class ShiftConfig:
    """Attributes:
    shift_weight: how much of the support residual's mean is added to the predictions.
    """

    shift_weight: float = 1.0


def _shift_build(config: ShiftConfig, ctx):
    apply_fn, init_fn = ctx.classifier()

    def adapt(params, x, y, steps=None, key=None):
        return params, config.shift_weight * jnp.mean(y - apply_fn(params, x), axis=0)

    def predict(state, x):
        params, shift = state
        return apply_fn(params, x) + shift

    def outer_loss(params, episode, key=None):
        out = predict(adapt(params, episode.support_x, episode.support_y), episode.query_x)
        loss = jnp.mean((out - episode.query_y) ** 2)
        return loss, {"loss": loss}

    return gradient_learner(init_fn, adapt, predict, outer_loss, ctx.task_map)


def test_a_learner_registered_outside_the_package_trains_and_evaluates_from_the_cli(
    tmp_path, capsys
):
    registry.register_learner(
        "support-shift", _shift_build, ShiftConfig, families=("regression",), replace=True
    )
    try:
        assert "support-shift" in registry.learner_names("regression")
        out = tmp_path / "shift"
        base = ["train", "sinusoid", "--algo", "support-shift", "--steps", "40"]
        flags = ["--shift-weight", "0.5", "--no-progress", "--no-compile-cache", "--out", str(out)]
        assert main([*base, *flags]) == 0
        saved = json.loads((out / "config.json").read_text())
        assert saved["algo"] == "support-shift" and saved["shift_weight"] == 0.5
        records = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
        assert records[-1]["step"] == 40
        assert main(["eval", str(out), "--max-steps", "1", "--tasks", "20", "--shots", "5"]) == 0
        mse = json.loads((out / "eval.json").read_text())["mse"]["5"]
        assert np.isfinite(mse["0"][0])
    finally:
        registry.unregister_learner("support-shift")
    assert "support-shift" not in registry.learner_names()


def test_context_gives_each_data_set_its_networks():
    ctx = context(FewShotConfig(algo="protonet", filters=8))
    assert ctx.input_shape == (28, 28, 1)
    assert ctx.feature_shape(ctx.embedding()) == (8,)
    assert ctx.feature_shape(ctx.embedding(pool_blocks=2, flatten=False)) == (7, 7, 8)
    with pytest.raises(ValueError, match="no embedding"):
        context(SinusoidConfig()).embedding()
