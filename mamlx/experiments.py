"""Experiment configurations: frozen dataclasses that build a runnable setup.

A configuration is everything needed to rebuild a run (it is saved as
``config.json`` in the run directory); ``build(config)`` turns it into the
learner, the task sampler, the dataset and the outer optimizer.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from mamlx._checks import check_count
from mamlx.algorithms import (
    MetaLearner,
    anil,
    fomaml,
    maml,
    meta_lstm,
    metasgd,
    pretrain,
    reptile,
)
from mamlx.algorithms.base import TASK_MAPS, resolve_task_map  # noqa: F401 - re-exported
from mamlx.models import MLP, model
from mamlx.models.conv import IMPLS as CONV_IMPLS
from mamlx.models.conv import default_impl
from mamlx.models.conv4 import READOUTS
from mamlx.tasks import sinusoid

SINUSOID_ALGOS = {"maml": maml, "fomaml": fomaml, "pretrain": pretrain}
FEWSHOT_ALGOS = ("maml", "fomaml", "reptile", "metasgd", "anil", "meta-lstm")


class Experiment(NamedTuple):
    """A built configuration, ready for :func:`mamlx.train.fit`."""

    learner: MetaLearner
    sampler: Any
    data: Any
    optimizer: optax.GradientTransformation
    eval_sampler: Any = None
    splits: dict | None = None  # held-out arrays by name ("val", "test")


def _counts(config: Any, low: int, *names: str) -> None:
    """Check integer fields (``>= low``) and store them as Python ints (JSON-ready)."""
    for name in names:
        object.__setattr__(config, name, check_count(name, getattr(config, name), low=low))


@dataclass(frozen=True)
class SinusoidConfig:
    """Sine-wave regression, defaults from Finn et al. (2017), Sec. 5.1 and Appendix A.1.

    K = 10 shots, one inner SGD step with α = 0.01, meta-batch 25, Adam with
    β = 1e-3, 70,000 meta-steps, MLP 1-40-40-1 with ReLU.
    """

    algo: str = "maml"
    shots: int = 10
    steps: int = 70_000
    inner_steps: int = 1
    inner_lr: float = 0.01
    meta_batch: int = 25
    meta_lr: float = 1e-3
    seed: int = 0
    hidden: tuple[int, ...] = (40, 40)
    task_map: str = "vmap"
    task: str = field(default="sinusoid", init=False)

    def __post_init__(self):
        if self.algo not in SINUSOID_ALGOS:
            raise ValueError(
                f"unknown algorithm {self.algo!r} for sinusoid; choose from {sorted(SINUSOID_ALGOS)}"
            )
        _counts(self, 1, "shots", "meta_batch")
        _counts(self, 0, "steps", "inner_steps")
        for name in ("inner_lr", "meta_lr"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive finite number, got {v!r}")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FewShotConfig:
    """N-way K-shot image classification with an optimization-based learner and Conv-4.

    Defaults are MAML's Omniglot 5-way 1-shot setting (Finn et al. 2017, Sec. 5.2 and
    the reference code): inner lr 0.4, 1 inner step (3 at test), meta-batch 32, Adam
    1e-3, 60,000 meta-steps, K query examples per class, 64 filters with stride-2
    convolutions, transductive batch norm; 1200 / 423 character split with 90-degree
    rotations as new training classes. See :data:`PRESETS` for the other tables.
    ``task_map="auto"`` loops over tasks on one CPU device and vectorizes elsewhere
    (:func:`resolve_task_map`).

    ``algo="meta-lstm"`` (Ravi & Larochelle 2017) reads ``inner_lr`` as the initial
    input gate (learning rate, in (0, 1)), ``lstm_hidden`` as the meta-learner LSTM's
    width, and ``second_order`` for the exact meta-gradient. ``clip_norm > 0`` clips
    the meta-gradient's global norm before the outer optimizer (any algorithm).
    ``conv_impl=""`` picks the convolution by algorithm and backend (:func:`conv_default`).
    ``resize`` is the Omniglot 105 -> 28 filter: ``"lanczos"`` (gray edges) or ``"nearest"``
    (the binary images MAML's own script produced; see :mod:`mamlx.tasks.omniglot`).
    ``readout`` feeds the head the flattened last feature map (``"flatten"``) or its spatial
    mean (``"mean"``, MAML's reference code on Omniglot). The defaults, ``"lanczos"`` and
    ``"flatten"``, are what the results in ``benchmarks/results`` used unless a row's
    command says otherwise; MAML's own Omniglot pipeline is ``resize="nearest",
    readout="mean"``.
    ``eval_rotate=True`` also counts the 90-degree rotations of validation and test
    characters as classes (423 test characters -> 1692 classes), as MAML's reference code
    (it rotates every task's classes, train or test) and Prototypical Networks (Snell et
    al. 2017, Sec. 3.1: "the remaining classes, including rotations, for test") do; only
    where the split has rotations (Vinyals split). The results' "ours" columns use the
    default, ``False``; their "test rotated" columns, ``True``.
    """

    algo: str = "maml"
    ways: int = 5
    shots: int = 1
    queries: int = 1
    steps: int = 60_000
    inner_steps: int = 1
    eval_inner_steps: int = 3
    inner_lr: float = 0.4
    inner_opt: str = "sgd"
    meta_batch: int = 32
    meta_lr: float = 1e-3
    meta_lr_schedule: str = "constant"
    clip_norm: float = 0.0
    lstm_hidden: int = 20
    second_order: bool = False
    seed: int = 0
    filters: int = 64
    pool: str = "stride"
    transductive: bool = True
    task_map: str = "auto"
    conv_impl: str = ""
    data_dir: str = ""
    split: str = "vinyals"
    rotate: bool = True  # only where the split's convention has rotations (Vinyals split)
    eval_rotate: bool = False
    image_size: int = 28
    resize: str = "lanczos"
    readout: str = "flatten"
    val_every: int = 2000
    val_tasks: int = 200
    eval_tasks: int = 600
    eval_shots: int = 0
    preset: str = ""
    task: str = field(default="omniglot", init=False)

    def __post_init__(self):
        if self.data_dir:  # absolute: eval and resume work from any working directory
            path = os.path.abspath(os.path.expanduser(os.fspath(self.data_dir)))
            object.__setattr__(self, "data_dir", path)
        if self.algo not in FEWSHOT_ALGOS:
            raise ValueError(f"unknown algorithm {self.algo!r}; choose from {list(FEWSHOT_ALGOS)}")
        _counts(self, 1, "ways", "shots", "queries", "meta_batch", "filters", "image_size")
        _counts(self, 1, "val_every", "val_tasks", "eval_tasks", "lstm_hidden")
        for name in ("second_order", "transductive", "rotate", "eval_rotate"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):  # "False" would be true
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
            object.__setattr__(self, name, bool(getattr(self, name)))
        _counts(self, 0, "steps", "inner_steps", "eval_inner_steps", "eval_shots")
        for name in ("inner_lr", "meta_lr"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive finite number, got {v!r}")
        c = self.clip_norm
        if not (isinstance(c, (int, float)) and math.isfinite(c) and c >= 0):
            raise ValueError(f"clip_norm must be a finite number >= 0 (0: no clipping), got {c!r}")
        if self.algo == "meta-lstm" and not self.inner_lr < 1:
            raise ValueError(
                f"meta-lstm reads inner_lr as the initial input gate σ(b_I), so it must be "
                f"< 1, got {self.inner_lr}"
            )
        if self.algo == "meta-lstm" and self.inner_steps < 1:
            raise ValueError(f"meta-lstm needs inner_steps >= 1, got {self.inner_steps}")
        choices = {
            "pool": ("stride", "max"),
            "inner_opt": ("sgd", "adam"),
            "meta_lr_schedule": ("constant", "linear"),
            "task_map": TASK_MAPS,
            "split": ("vinyals", "background", "ravi"),
            "conv_impl": ("", *CONV_IMPLS),
            "resize": ("lanczos", "nearest") if self.task == "omniglot" else ("lanczos",),
            "readout": READOUTS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class MiniImageNetConfig(FewShotConfig):
    """mini-ImageNet 5-way, MAML's setting (Finn et al. 2017, Sec. 5.2): 32 filters,
    2x2 max-pooling, inner lr 0.01, 5 inner steps (10 at test), 15 queries per class,
    meta-batch 4, Ravi & Larochelle's 64 / 16 / 20 class split, 84x84 images. Needs
    ``data_dir`` with the images and the split CSVs."""

    shots: int = 1
    queries: int = 15
    inner_steps: int = 5
    eval_inner_steps: int = 10
    inner_lr: float = 0.01
    meta_batch: int = 4
    filters: int = 32
    pool: str = "max"
    split: str = "ravi"
    rotate: bool = False
    image_size: int = 84
    task: str = field(default="miniimagenet", init=False)


CONFIGS = {
    "sinusoid": SinusoidConfig,
    "omniglot": FewShotConfig,
    "miniimagenet": MiniImageNetConfig,
}

# Reptile (Nichol, Achiam & Schulman 2018, Appendix A, Table 3): inner Adam (lr 1e-3,
# beta1 = 0), 10 training shots, 5 inner iterations (10 for 20-way, lr 5e-4), outer step size
# 1.0 annealed linearly to 0, meta-batch 5, 50 inner iterations at test, non-transductive.
_REPTILE = dict(
    algo="reptile",
    inner_opt="adam",
    inner_lr=1e-3,
    shots=10,
    queries=10,
    inner_steps=5,
    eval_inner_steps=50,
    meta_lr=1.0,
    meta_lr_schedule="linear",
    meta_batch=5,
    steps=100_000,
    transductive=False,
)
_REPTILE_20 = {**_REPTILE, "ways": 20, "inner_lr": 5e-4, "inner_steps": 10, "steps": 200_000}

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
    **_MLSTM_CPU,
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

# Published settings. Each entry: (task, overrides, source).
PRESETS: dict[str, tuple[str, dict, str]] = {
    "maml-5w1s": (
        "omniglot",
        dict(),
        "Finn et al. 2017, Sec. 5.2 / Table 1: Omniglot 5-way 1-shot 98.7 ± 0.4",
    ),
    "maml-5w5s": (
        "omniglot",
        dict(shots=5, queries=5),
        "Finn et al. 2017, Table 1: Omniglot 5-way 5-shot 99.9 ± 0.1",
    ),
    "maml-20w1s": (
        "omniglot",
        dict(ways=20, inner_lr=0.1, inner_steps=5, eval_inner_steps=5, meta_batch=16),
        "Finn et al. 2017, Sec. 5.2 / Table 1: Omniglot 20-way 1-shot 95.8 ± 0.3",
    ),
    "maml-20w5s": (
        "omniglot",
        dict(
            ways=20,
            shots=5,
            queries=5,
            inner_lr=0.1,
            inner_steps=5,
            eval_inner_steps=5,
            meta_batch=16,
        ),
        "Finn et al. 2017, Table 1: Omniglot 20-way 5-shot 98.9 ± 0.2",
    ),
    "fomaml-5w1s": (
        "omniglot",
        dict(algo="fomaml"),
        "Finn et al. 2017, Sec. 5.2 (first-order approximation)",
    ),
    "fomaml-5w1s-cpu": (
        "omniglot",
        dict(algo="fomaml", meta_batch=16, steps=16_000, task_map="map", val_every=1000),
        "mamlx CPU configuration (2 cores, < 30 min): first-order MAML with the Finn et al. "
        "2017 Omniglot 5-way 1-shot settings, meta-batch 16, 16k steps; measured 95.57 ± 0.79 "
        "(benchmarks/results/fewshot.md)",
    ),
    "maml-mini-5w1s": (
        "miniimagenet",
        dict(),
        "Finn et al. 2017, Table 1: mini-ImageNet 5-way 1-shot 48.70 ± 1.84",
    ),
    "maml-mini-5w5s": (
        "miniimagenet",
        dict(shots=5, meta_batch=2),
        "Finn et al. 2017, Table 1: mini-ImageNet 5-way 5-shot 63.11 ± 0.92",
    ),
    "fomaml-mini-5w1s": (
        "miniimagenet",
        dict(algo="fomaml"),
        "Finn et al. 2017, Table 1: first-order MAML mini-ImageNet 5-way 1-shot 48.07 ± 1.75",
    ),
    "fomaml-mini-5w5s": (
        "miniimagenet",
        dict(algo="fomaml", shots=5, meta_batch=2),
        "Finn et al. 2017, Table 1: first-order MAML mini-ImageNet 5-way 5-shot 63.15 ± 0.91",
    ),
    "reptile-5w1s": (
        "omniglot",
        {**_REPTILE, "eval_shots": 1},
        "Nichol et al. 2018, Table 1: Omniglot 5-way 1-shot 95.39 ± 0.09 (non-transductive)",
    ),
    "reptile-5w5s": (
        "omniglot",
        {**_REPTILE, "eval_shots": 5},
        "Nichol et al. 2018, Table 1: Omniglot 5-way 5-shot 98.90 ± 0.10 (non-transductive)",
    ),
    "reptile-20w1s": (
        "omniglot",
        {**_REPTILE_20, "eval_shots": 1},
        "Nichol et al. 2018, Table 1: Omniglot 20-way 1-shot 88.14 ± 0.15 (non-transductive)",
    ),
    "reptile-20w5s": (
        "omniglot",
        {**_REPTILE_20, "eval_shots": 5},
        "Nichol et al. 2018, Table 1: Omniglot 20-way 5-shot 96.65 ± 0.33 (non-transductive)",
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
    "meta-lstm-mini-5w1s": (
        "miniimagenet",
        {**_MLSTM_MINI, "shots": 1},
        "Ravi & Larochelle 2017, Table 1: meta-learner LSTM mini-ImageNet 5-way 1-shot "
        "43.44 ± 0.77",
    ),
    "meta-lstm-mini-5w5s": (
        "miniimagenet",
        {**_MLSTM_MINI, "shots": 5},
        "Ravi & Larochelle 2017, Table 1: meta-learner LSTM mini-ImageNet 5-way 5-shot "
        "60.60 ± 0.71",
    ),
}


def preset_config(name: str, **overrides) -> Any:
    """The configuration of a named preset, with explicit ``overrides`` on top."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
    task, values, _ = PRESETS[name]
    return CONFIGS[task](**{**values, **overrides, "preset": name})


def config_from_dict(d: dict) -> Any:
    """Rebuild a configuration saved by ``to_dict`` (the ``task`` key picks the class)."""
    d = dict(d)
    task = d.pop("task", None)
    if task not in CONFIGS:
        raise ValueError(f"unknown task {task!r} in configuration; known: {sorted(CONFIGS)}")
    cls = CONFIGS[task]
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {task} configuration fields: {sorted(unknown)}")
    for k, v in d.items():
        if isinstance(v, list):
            d[k] = tuple(v)
    return cls(**d)


def sinusoid_model(hidden: tuple[int, ...] = (40, 40)):
    """``(apply_fn, init_fn)`` of the sine-wave MLP."""
    return model(lambda rngs: MLP((1, *hidden, 1), rngs=rngs))


def resolve_data_dir(config: FewShotConfig) -> str | None:
    """The data folder of a few-shot run: ``config.data_dir``, else ``$MAMLX_DATA_DIR/<task>``."""
    if config.data_dir:
        return config.data_dir
    env = os.environ.get("MAMLX_DATA_DIR")
    return os.path.join(env, config.task) if env else None


def load_fewshot_splits(config: FewShotConfig) -> dict[str, Any]:
    """Arrays ``{"train", "val", "test"}`` of shape (classes, examples, H, W, C) on the device.

    Also ``"train_rotations"``: 4 where the split's convention counts the 90-degree
    rotations of training characters as new classes (Omniglot, Vinyals split), else 1.
    A split may hold no classes (``val`` of Lake et al.'s background split).
    """
    import jax.numpy as jnp

    from mamlx.tasks import load_miniimagenet, load_omniglot, omniglot_split

    root = resolve_data_dir(config)
    if root is not None and not os.path.isdir(root):  # a typo, not a place to download to
        raise FileNotFoundError(f"data folder {root} does not exist")
    if config.task == "omniglot":
        npz = root and os.path.isfile(os.path.join(root, "images_background.npz"))
        if npz:
            chars = load_omniglot("npz", root, size=config.image_size, resize=config.resize)
        else:
            try:
                chars = load_omniglot(
                    "zip", root, download=True, size=config.image_size, resize=config.resize
                )
            except OSError as e:
                where = root or "the mamlx cache"
                raise OSError(
                    f"Omniglot is not in {where} (images_background.npz or the official zips) "
                    f"and could not be downloaded: {e}"
                ) from e
        split = omniglot_split(chars, config.split, seed=config.seed)
        arrays = {"train": split.train, "val": split.val, "test": split.test}
        rotations = split.train_rotations
    else:
        if root is None:
            raise FileNotFoundError(
                "mini-ImageNet needs --data-dir (or $MAMLX_DATA_DIR/miniimagenet): a folder "
                "with the images and the train/val/test CSVs of Ravi & Larochelle"
            )
        arrays = {
            name: load_miniimagenet(root, name, size=config.image_size).images
            for name in ("train", "val", "test")
        }
        rotations = 1
    return {**{k: jnp.asarray(v) for k, v in arrays.items()}, "train_rotations": rotations}


PER_TASK_KERNEL_ALGOS = ("maml", "fomaml", "reptile", "metasgd", "meta-lstm")


def conv_default(algo: str, task_map: str = "auto") -> str:
    """The convolution of a few-shot algorithm when ``conv_impl`` is not given.

    MAML, first-order MAML, Reptile, Meta-SGD and the meta-LSTM adapt the
    convolutions per task, so with ``vmap`` over tasks their kernels carry the
    task axis (:func:`mamlx.models.conv.default_impl` with ``batched_kernels``).
    ANIL adapts the head only, and ``task_map="map"`` runs one task at a time:
    those get the backend's default.
    """
    batched = algo in PER_TASK_KERNEL_ALGOS and resolve_task_map(task_map) == "vmap"
    return default_impl(batched_kernels=batched)


def fewshot_conv_impl(config: FewShotConfig) -> str:
    """The convolution a few-shot configuration's Conv-4 uses: ``conv_impl`` or
    :func:`conv_default` (the model and ``run.json``'s record both come from here)."""
    return config.conv_impl or conv_default(config.algo, config.task_map)


def resolved_settings(config: Any) -> dict:
    """What a configuration leaves to the machine, as resolved on this one.

    ``config.json`` keeps what a run computes (``task_map="auto"``, ``conv_impl=""``);
    this gives what those defaults became here: the backend and devices, the task
    map and, for few-shot runs, the convolution. The CLI saves it in ``run.json``.
    """
    device = jax.devices()[0]
    out = {
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "task_map": resolve_task_map(config.task_map),
    }
    if isinstance(config, FewShotConfig):
        out["conv_impl"] = fewshot_conv_impl(config)
    return out


def fewshot_model(config: FewShotConfig, ways: int | None = None):
    """``(apply_fn, init_fn)`` of the Conv-4 of a few-shot configuration."""
    from mamlx.models.conv4 import Conv4

    channels = 1 if config.task == "omniglot" else 3
    shape = (config.image_size, config.image_size, channels)
    impl = fewshot_conv_impl(config)
    return model(
        lambda rngs: Conv4(
            ways or config.ways,
            in_shape=shape,
            filters=config.filters,
            pool=config.pool,
            transductive=True,
            conv_impl=impl,
            readout=config.readout,
            rngs=rngs,
        )
    )


def fewshot_learner(config: FewShotConfig, ways: int | None = None) -> MetaLearner:
    """The learner of a few-shot configuration (Conv-4 with a head of ``ways`` logits)."""
    apply_fn, init_fn = fewshot_model(config, ways)
    common = dict(task_map=config.task_map, transductive=config.transductive)
    if config.algo == "reptile":
        inner_opt = (
            optax.adam(config.inner_lr, b1=0.0) if config.inner_opt == "adam" else config.inner_lr
        )
        return reptile(
            apply_fn, init_fn, inner_opt=inner_opt, inner_steps=config.inner_steps, **common
        )
    if config.algo == "meta-lstm":
        return meta_lstm(
            apply_fn,
            init_fn,
            inner_steps=config.inner_steps,
            init_lr=config.inner_lr,
            hidden_size=config.lstm_hidden,
            second_order=config.second_order,
            **common,
        )
    make = {"maml": maml, "fomaml": fomaml, "metasgd": metasgd, "anil": anil}[config.algo]
    return make(
        apply_fn, init_fn, inner_lr=config.inner_lr, inner_steps=config.inner_steps, **common
    )


def outer_optimizer(config: FewShotConfig) -> optax.GradientTransformation:
    """Adam (MAML) or SGD on the Reptile pseudo-gradient, with an optional linear decay to 0.

    With ``clip_norm > 0`` the meta-gradient is first clipped to that global norm
    (Ravi & Larochelle 2017 clip the meta-learner's gradients).
    """
    lr = (
        optax.linear_schedule(config.meta_lr, 0.0, max(config.steps, 1))
        if config.meta_lr_schedule == "linear"
        else config.meta_lr
    )
    opt = optax.sgd(lr) if config.algo == "reptile" else optax.adam(lr)
    if config.clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(config.clip_norm), opt)
    return opt


def build(config: Any) -> Experiment:
    """Build learner, sampler, data and outer optimizer for a configuration."""
    if isinstance(config, FewShotConfig):
        from mamlx.tasks import fewshot_sampler

        splits = dict(load_fewshot_splits(config))
        rotations = splits.pop("train_rotations")
        rotate = config.rotate and rotations > 1
        if config.eval_rotate and rotations == 1:
            raise ValueError(
                f"eval_rotate=True: the {config.task} {config.split!r} split has no rotated "
                f"classes (only Omniglot's Vinyals split counts rotations as classes)"
            )
        sampler = fewshot_sampler(config.ways, config.shots, config.queries, rotate=rotate)
        eval_shots = config.eval_shots or config.shots
        eval_sampler = fewshot_sampler(
            config.ways, eval_shots, config.queries, rotate=config.eval_rotate
        )
        if splits["val"].shape[0] == 0:  # e.g. the background split without val alphabets
            del splits["val"]
        for name, arr in splits.items():  # fail now (not inside jit) if a split is too small
            smp = sampler if name == "train" else eval_sampler
            try:
                jax.eval_shape(smp.sample, jax.random.PRNGKey(0), arr)
            except ValueError as e:
                raise ValueError(
                    f"{config.task} {config.split!r} split, {name} classes: {e}"
                ) from e
        return Experiment(
            fewshot_learner(config),
            sampler,
            splits["train"],
            outer_optimizer(config),
            eval_sampler=eval_sampler,
            splits={k: v for k, v in splits.items() if k != "train"},
        )
    if isinstance(config, SinusoidConfig):
        apply_fn, init_fn = sinusoid_model(config.hidden)
        kwargs = dict(inner_lr=config.inner_lr, inner_steps=config.inner_steps)
        learner = SINUSOID_ALGOS[config.algo](apply_fn, init_fn, task_map=config.task_map, **kwargs)
        return Experiment(learner, sinusoid(config.shots), None, optax.adam(config.meta_lr))
    raise ValueError(f"cannot build configuration of type {type(config).__name__}")
