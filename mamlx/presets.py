"""Named settings from the papers (and 2-CPU budgets), each citing its source table.

``PRESETS[name] = (data set, settings, source)``; :func:`preset_config` turns one into a
run configuration, and ``mamlx train DATASET --preset NAME`` starts from it.
"""

from __future__ import annotations

from typing import Any

from mamlx import published
from mamlx.config import config_class


def _cite(name: str, note: str = "") -> str:
    """The source of preset ``name``: its published number (:mod:`mamlx.published`)."""
    cite = published.for_preset(name).cite()
    return f"{note}; published: {cite}" if note else cite


# First-order MAML with Finn et al.'s settings; Nichol et al. 2018 publish its Omniglot numbers
# (run with their own settings).
_FOMAML = "Finn et al. 2017, Sec. 5.2 (first-order approximation), with Finn et al.'s settings"

# Reptile (Nichol, Achiam & Schulman 2018), non-transductive: the reference code's commands
# for the paper's non-transductive Omniglot numbers (openai/supervised-reptile README), one
# per setting: inner Adam (beta1 = 0), each inner step on the next minibatch of a shuffled
# support set (one pass over it), outer step annealed linearly to 0. 5w1s: 12 training
# shots, batches of 5, 12 steps, lr 4.4e-4, meta-batch 3, 200k steps, 86 steps at test.
# 5w5s: 10 shots, batches of 10, 5 steps, lr 1.5e-3, outer step 0.7, meta-batch 5, 100k, 100
# at test. 20-way: 9 (1-shot) / 12 (5-shot) shots, batches of 15 / 20, 12 steps, lr 4.6e-4,
# meta-batch 3, 200k, 97 at test. The code keeps Adam's state from task to task and starts
# every test task from it (reset_inner_state=False; validation 70.1 against 57.4 % with a
# fresh state per task after 2,500 steps at 5w1s: benchmarks/reptile_adam_state.py). Not
# reproduced: it batches its test-time steps (mamlx: the whole support set). Training queries only feed the logged metrics (the update never sees them):
# 8 where 12 training shots leave 8 of Omniglot's 20 examples per class; 10 at test.
_REPTILE = dict(
    algo="reptile",
    inner_opt="adam",
    queries=10,
    eval_queries=10,
    reset_inner_state=False,
    meta_lr=1.0,
    meta_lr_schedule="linear",
    transductive=False,
)
_REPTILE_5W1S = dict(
    _REPTILE, shots=12, queries=8, inner_batch=5, inner_steps=12, inner_lr=4.4e-4, meta_batch=3,
    steps=200_000, eval_inner_steps=86, eval_shots=1,
)  # fmt: skip
_REPTILE_5W5S = dict(
    _REPTILE, shots=10, inner_batch=10, inner_steps=5, inner_lr=1.5e-3, meta_lr=0.7,
    meta_batch=5, steps=100_000, eval_inner_steps=100, eval_shots=5,
)  # fmt: skip
_REPTILE_20 = dict(
    _REPTILE, ways=20, inner_steps=12, inner_lr=4.6e-4, meta_batch=3, steps=200_000,
    eval_inner_steps=97,
)  # fmt: skip
_REPTILE_20W1S = dict(_REPTILE_20, shots=9, inner_batch=15, eval_shots=1)
_REPTILE_20W5S = dict(_REPTILE_20, shots=12, queries=8, inner_batch=20, eval_shots=5)

# Meta-learner LSTM (Ravi & Larochelle 2017) on a 2-core CPU: their learner (Conv-4 with 32
# filters), their meta-learner (hidden 20, meta-gradient clipped to norm 0.25, Adam 1e-3,
# first order), 5 LSTM updates on the support set (train and test), initial input gate 0.1,
# 5 queries per class, meta-batch 4, 500 meta-steps (1-2 s each on 2 shared cores, about
# 15 min; the meta-learner LSTM's per-coordinate state makes a step ~20x first-order MAML's).
# The ``fomaml-*-mlstm-cmp`` presets run first-order MAML under the same protocol.
_MLSTM_CPU = dict(
    algo="meta-lstm",
    filters=32,
    inner_lr=0.1,
    inner_steps=5,
    eval_inner_steps=5,
    lstm_hidden=20,
    clip_norm=0.25,
    meta_batch=4,
    queries=5,
    steps=500,
    val_every=250,
    val_tasks=100,
)
_MLSTM_CMP = {
    **{k: v for k, v in _MLSTM_CPU.items() if k != "lstm_hidden"},
    "algo": "fomaml",
    "inner_lr": 0.4,
    "inner_steps": 1,
    "eval_inner_steps": 3,
}
# Meta-learner LSTM on mini-ImageNet, the authors' code defaults (twitter/meta-learning-lstm,
# 5-shot: 8 updates on the whole 25-image support, 15 queries per class, one episode per
# meta-update, 50,000 episodes, Adam 1e-3, gradient clipping 0.25, hidden 20, 32 filters).
# The initial input gate σ(b_I) = 0.01 is the middle of the paper's b_I ~ U(-5, -4); the
# 1-shot setting uses the same number of updates (not checked against the authors' config).
_MLSTM_MINI = dict(
    algo="meta-lstm",
    inner_lr=0.01,
    inner_steps=8,
    eval_inner_steps=8,
    lstm_hidden=20,
    clip_norm=0.25,
    meta_batch=1,
    steps=50_000,
)

# MAML++ (Antoniou, Edwards & Storkey, ICLR 2019) as the authors' configuration files set it
# (HowToTrainYourMAMLPytorch, experiment_config/omniglot_maml++-omniglot_*): Conv-4 of 64
# filters with max pooling, 5 inner steps at lr 0.1 (learned per layer and step) in training
# and test, meta-batch 8, 1 query per class, Adam 1e-3 cosine-annealed to 1e-5 over 100 epochs
# of 500 steps, multi-step loss annealed over 10 epochs, per-step batch norm, second order
# throughout (first_order_to_second_order_epoch -1). mamlx keeps its own Vinyals split with
# rotations (the authors split 1,150 / 50 / 423 characters at random).
_MAMLPP = dict(
    algo="maml++",
    pool="max",
    inner_lr=0.1,
    inner_steps=5,
    eval_inner_steps=5,
    meta_batch=8,
    queries=1,
    steps=50_000,
    epoch_steps=500,
    msl_epochs=10,
    meta_lr=1e-3,
    meta_lr_schedule="cosine",
    min_meta_lr=1e-5,
)
# mini-ImageNet (experiment_config/mini-imagenet_maml++-mini-imagenet_*_2_0.01_48_5_*): 48
# filters, inner lr 0.01, meta-batch 2, 15 queries per class, multi-step loss over 15 epochs,
# min_learning_rate = meta_learning_rate = 1e-3 (so the cosine schedule stays at 1e-3).
_MAMLPP_MINI = {
    **_MAMLPP,
    "filters": 48,
    "inner_lr": 0.01,
    "meta_batch": 2,
    "queries": 15,
    "msl_epochs": 15,
    "min_meta_lr": 1e-3,
}

# Ravi & Larochelle 2017's baselines on mini-ImageNet (Table 1; quoted by Finn et al. 2017,
# Table 1): their learner network (Conv-4, 32 filters) trained as one classifier over the 64
# training classes, then on each test episode either fine-tuned on the support set or used
# as an embedding for nearest-neighbour classification. The paper does not give the
# training budget or the fine-tuning schedule; mamlx's choices: batches of 64 images, 30,000
# steps, 100 full-batch steps at lr 0.01 of all weights at test, 15 queries per class.
_MINI_BASELINE = dict(
    algo="transfer",
    meta_batch=1,
    batch=64,
    steps=30_000,
    queries=15,
    inner_lr=0.01,
    eval_inner_steps=100,
    val_every=1000,
)

# MAML's 20-way Omniglot settings (Finn et al. 2017, Sec. 5.2: 5 inner steps of 0.1 in training and
# at test, meta-batch 16); first-order MAML uses the same.
_MAML_20 = dict(ways=20, inner_lr=0.1, inner_steps=5, eval_inner_steps=5, meta_batch=16)

# Published settings. Each entry: (task, overrides, source).
PRESETS: dict[str, tuple[str, dict, str]] = {
    "maml-5w1s": (
        "omniglot",
        dict(),
        _cite("maml-5w1s"),
    ),
    "maml-5w5s": (
        "omniglot",
        dict(shots=5, queries=5),
        _cite("maml-5w5s"),
    ),
    "maml-20w1s": (
        "omniglot",
        {**_MAML_20},
        _cite("maml-20w1s"),
    ),
    "maml-20w5s": (
        "omniglot",
        {**_MAML_20, "shots": 5, "queries": 5},
        _cite("maml-20w5s"),
    ),
    "maml-noconv-5w1s": (
        "omniglot",
        dict(backbone="mlp"),
        _cite("maml-noconv-5w1s"),
    ),
    "maml-noconv-5w5s": (
        "omniglot",
        dict(backbone="mlp", shots=5, queries=5),
        _cite("maml-noconv-5w5s"),
    ),
    "fomaml-5w1s": (
        "omniglot",
        dict(algo="fomaml"),
        _cite("fomaml-5w1s", _FOMAML),
    ),
    "fomaml-5w5s": (
        "omniglot",
        dict(algo="fomaml", shots=5, queries=5),
        _cite("fomaml-5w5s", _FOMAML),
    ),
    "fomaml-20w1s": (
        "omniglot",
        {**_MAML_20, "algo": "fomaml"},
        _cite("fomaml-20w1s", _FOMAML),
    ),
    "fomaml-20w5s": (
        "omniglot",
        {**_MAML_20, "algo": "fomaml", "shots": 5, "queries": 5},
        _cite("fomaml-20w5s", _FOMAML),
    ),
    "fomaml-5w1s-cpu": (
        "omniglot",
        dict(algo="fomaml", meta_batch=16, steps=16_000, task_map="map", val_every=1000),
        "mamlx CPU configuration (2 cores, < 30 min): first-order MAML with the Finn et al. "
        "2017 Omniglot 5-way 1-shot settings, meta-batch 16, 16k steps; measured 95.57 ± 0.79 "
        "(benchmarks/results/fewshot.md)",
    ),
    "maml++-5w1s": (
        "omniglot",
        {**_MAMLPP},
        _cite("maml++-5w1s"),
    ),
    "maml++-5w5s": (
        "omniglot",
        {**_MAMLPP, "shots": 5},
        _cite("maml++-5w5s"),
    ),
    "maml++-20w1s": (
        "omniglot",
        {**_MAMLPP, "ways": 20},
        _cite("maml++-20w1s"),
    ),
    "maml++-20w5s": (
        "omniglot",
        {**_MAMLPP, "ways": 20, "shots": 5},
        _cite("maml++-20w5s"),
    ),
    "maml++-mini-5w1s": (
        "miniimagenet",
        {**_MAMLPP_MINI},
        _cite("maml++-mini-5w1s"),
    ),
    "maml++-mini-5w5s": (
        "miniimagenet",
        {**_MAMLPP_MINI, "shots": 5},
        _cite("maml++-mini-5w5s"),
    ),
    "maml-mini-5w1s": (
        "miniimagenet",
        dict(),
        _cite("maml-mini-5w1s"),
    ),
    "maml-mini-5w5s": (
        "miniimagenet",
        dict(shots=5, meta_batch=2),
        _cite("maml-mini-5w5s"),
    ),
    "fomaml-mini-5w1s": (
        "miniimagenet",
        dict(algo="fomaml"),
        _cite("fomaml-mini-5w1s"),
    ),
    "fomaml-mini-5w5s": (
        "miniimagenet",
        dict(algo="fomaml", shots=5, meta_batch=2),
        _cite("fomaml-mini-5w5s"),
    ),
    "reptile-5w1s": (
        "omniglot",
        _REPTILE_5W1S,
        _cite("reptile-5w1s"),
    ),
    "reptile-5w5s": (
        "omniglot",
        _REPTILE_5W5S,
        _cite("reptile-5w5s"),
    ),
    "reptile-20w1s": (
        "omniglot",
        _REPTILE_20W1S,
        _cite("reptile-20w1s"),
    ),
    "reptile-20w5s": (
        "omniglot",
        _REPTILE_20W5S,
        _cite("reptile-20w5s"),
    ),
    "meta-lstm-5w1s": (
        "omniglot",
        {**_MLSTM_CPU, "shots": 1},
        "mamlx CPU configuration of Ravi & Larochelle 2017 (meta-learner LSTM; the paper "
        "reports mini-ImageNet only): Omniglot 5-way 1-shot, 500 meta-steps of 4 tasks",
    ),
    "meta-lstm-5w5s": (
        "omniglot",
        {**_MLSTM_CPU, "shots": 5},
        "mamlx CPU configuration of Ravi & Larochelle 2017 (meta-learner LSTM): Omniglot "
        "5-way 5-shot, 500 meta-steps of 4 tasks",
    ),
    "fomaml-5w1s-mlstm-cmp": (
        "omniglot",
        {**_MLSTM_CMP, "shots": 1},
        "Finn et al. 2017 first-order MAML under the protocol of meta-lstm-5w1s (32 filters, "
        "5 queries, meta-batch 4, 500 steps, clipping 0.25) for a same-budget comparison",
    ),
    "fomaml-5w5s-mlstm-cmp": (
        "omniglot",
        {**_MLSTM_CMP, "shots": 5},
        "Finn et al. 2017 first-order MAML under the protocol of meta-lstm-5w5s",
    ),
    "maml-5w1s-mlstm-cmp": (
        "omniglot",
        {**_MLSTM_CMP, "algo": "maml", "shots": 1},
        "Finn et al. 2017 second-order MAML under the protocol of meta-lstm-5w1s",
    ),
    "maml-5w5s-mlstm-cmp": (
        "omniglot",
        {**_MLSTM_CMP, "algo": "maml", "shots": 5},
        "Finn et al. 2017 second-order MAML under the protocol of meta-lstm-5w5s",
    ),
    "finetune-mini-5w1s": (
        "miniimagenet",
        {**_MINI_BASELINE, "test_rule": "finetune", "finetune_body": True, "shots": 1},
        _cite("finetune-mini-5w1s"),
    ),
    "finetune-mini-5w5s": (
        "miniimagenet",
        {**_MINI_BASELINE, "test_rule": "finetune", "finetune_body": True, "shots": 5},
        _cite("finetune-mini-5w5s"),
    ),
    "nn-mini-5w1s": (
        "miniimagenet",
        {**_MINI_BASELINE, "test_rule": "nn", "shots": 1},
        _cite("nn-mini-5w1s"),
    ),
    "nn-mini-5w5s": (
        "miniimagenet",
        {**_MINI_BASELINE, "test_rule": "nn", "shots": 5},
        _cite("nn-mini-5w5s"),
    ),
    "meta-lstm-mini-5w1s": (
        "miniimagenet",
        {**_MLSTM_MINI, "shots": 1},
        _cite("meta-lstm-mini-5w1s"),
    ),
    "meta-lstm-mini-5w5s": (
        "miniimagenet",
        {**_MLSTM_MINI, "shots": 5},
        _cite("meta-lstm-mini-5w5s"),
    ),
}


# Metric learners on Omniglot, the papers' settings (Vinyals split, 28x28, Conv-4 of 64
# filters, Adam 1e-3). Test episodes: 15 queries per class at 5 ways, 5 at 20 ways. The
# published numbers: mamlx.published (Snell et al. 2017, Vinyals et al. 2016, Sung et al.
# 2018, Koch et al. 2015 as in Vinyals et al. 2016).
_METRIC = ("protonet", "matching", "relation", "siamese")


def _metric_settings(algo: str, ways: int, shots: int) -> dict:
    test = dict(eval_ways=ways, eval_queries=15 if ways == 5 else 5, eval_tasks=1000)
    if (
        algo == "protonet"
    ):  # Snell et al. 2017, Sec. 3.1: 60-way episodes, 5 queries, lr /2 per 2000
        return dict(ways=60, shots=shots, queries=5, steps=20_000, halve_every=2000, **test)
    if algo == "matching":  # Vinyals et al. 2016, Sec. 4.1: train on the test's N-way K-shot
        # The paper's softmax over cosines (scale 1) of ReLU features, which lie in [0, 1],
        # caps the right class's probability at e / (e + N - 1) (0.40 at 5 ways) and learns
        # slowly: validation 84.5 % at step 2,000 with scale 1 against 95.8 % with 10
        # (5w1s, 2 CPU cores; the #21 note). Only 1 and 10 were compared.
        return dict(
            ways=ways,
            shots=shots,
            queries=test["eval_queries"],
            steps=20_000,
            scale=10.0,
            **test,
        )
    if algo == "relation":  # Sung et al. 2018, Sec. 4.1: 19/15 (5-way), 10/5 (20-way) queries
        queries = {(5, 1): 19, (5, 5): 15, (20, 1): 10, (20, 5): 5}[(ways, shots)]
        return dict(
            ways=ways, shots=shots, queries=queries, steps=1_000_000, halve_every=100_000, **test
        )
    # Koch et al. 2015, Sec. 4: verification pairs, 128 per minibatch (64 ways x 2 examples)
    return dict(ways=64, shots=1, queries=1, steps=20_000, eval_shots=shots, **test)


for _algo in _METRIC:
    for _ways, _shots in ((5, 1), (5, 5), (20, 1), (20, 5)):
        _name = f"{_algo}-{_ways}w{_shots}s"
        PRESETS[_name] = (
            "omniglot",
            {"algo": _algo, "meta_batch": 1, **_metric_settings(_algo, _ways, _shots)},
            _cite(_name),
        )
del _algo, _ways, _shots, _name

# ProtoNet 20-way 1-shot on 2 CPU cores: Snell et al.'s settings, stopped by time (20 min
# reached 3,100 steps: 96.58 ± 0.16, benchmarks/results/metric.md).
PRESETS["protonet-20w1s-cpu"] = (
    "omniglot",
    {**PRESETS["protonet-20w1s"][1], "steps": 3_000, "val_every": 1000},
    "mamlx CPU configuration (2 cores, about 20 min) of Snell et al. 2017's Omniglot 20-way "
    "1-shot (96.0): 3,000 steps of 60-way episodes; measured 96.58 ± 0.16 at 3,100 steps",
)


def preset_config(name: str, **overrides) -> Any:
    """The configuration of a named preset, with explicit ``overrides`` on top."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
    task, values, _ = PRESETS[name]
    return config_class(task)(**{**values, **overrides, "preset": name})


#: Training wall time measured for a preset (benchmarks/results/fewshot.md, metric.md),
#: on 2 CPU cores (AMD EPYC) and on one GPU; a preset missing here was not timed. Entries
#: with steps and an accuracy are runs of the ledger (benchmarks/results/reproduction.json;
#: ``tests/test_ledger.py`` holds them to it).
MEASURED_TIME: dict[str, dict[str, str]] = {
    "maml-5w1s": {"gpu": "5.5 min for 56,000 steps (H100)"},
    "maml-20w1s": {"gpu": "2.8 min for 2,000 of 60,000 steps (H200)"},
    "fomaml-5w1s-cpu": {"cpu": "19-24 min"},
    "maml-noconv-5w1s": {"cpu": "40 min for 38,600 of 60,000 steps (shared cores): 89.87 ± 1.33"},
    "maml-noconv-5w5s": {"cpu": "41 min for 14,000 of 60,000 steps (shared cores): 97.55 ± 0.29"},
    "protonet-20w1s-cpu": {"cpu": "20 min (3,100 steps)"},
    "matching-5w1s": {"cpu": "16 min for 11,800 of 20,000 steps: 98.08 ± 0.20"},
    "matching-5w5s": {"cpu": "22 min for 12,200 of 20,000 steps: 99.34 ± 0.08"},
    "matching-20w1s": {"cpu": "22 min for 10,200 of 20,000 steps: 94.33 ± 0.21"},
    "matching-20w5s": {"cpu": "22 min for 6,200 of 20,000 steps: 97.50 ± 0.12"},
    "relation-5w1s": {"cpu": "17 min for 7,800 of 1,000,000 steps: 98.13 ± 0.19"},
    "relation-5w5s": {"cpu": "25 min for 5,400 of 1,000,000 steps (shared cores): 99.18 ± 0.09"},
    "relation-20w1s": {"cpu": "20 min for 2,600 of 1,000,000 steps: 95.55 ± 0.19"},
    "relation-20w5s": {"cpu": "20 min for 1,600 of 1,000,000 steps: 97.56 ± 0.11"},
    "reptile-5w1s": {"cpu": "27 min for 25,000 of 200,000 steps: 91.27 ± 0.57"},
    "reptile-5w5s": {"cpu": "15 min for 14,200 of 100,000 steps: 98.24 ± 0.19"},
    "siamese-5w1s": {"cpu": "38 min for 9,400 of 20,000 steps: 97.65 ± 0.22"},
    "siamese-5w5s": {"cpu": "38 min for 9,400 of 20,000 steps: 99.02 ± 0.11"},
    "siamese-20w1s": {"cpu": "38 min for 9,400 of 20,000 steps: 91.27 ± 0.27"},
    "siamese-20w5s": {"cpu": "38 min for 9,400 of 20,000 steps: 96.33 ± 0.15"},
    "meta-lstm-5w1s": {"cpu": "13 min"},
    "meta-lstm-5w5s": {"cpu": "9.5 min"},
    "fomaml-5w1s-mlstm-cmp": {"cpu": "0.6 min"},
    "fomaml-5w5s-mlstm-cmp": {"cpu": "0.6 min"},
    "maml-5w1s-mlstm-cmp": {"cpu": "0.7 min"},
    "maml-5w5s-mlstm-cmp": {"cpu": "0.8 min"},
}
