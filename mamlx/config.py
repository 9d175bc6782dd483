"""Run configurations: what a data set's run needs, with the learner's own settings inside.

A run configuration is a frozen dataclass of the settings every learner shares on a data
set (episode shape, training length, outer optimizer, network size, data folder) plus
``learner``, the chosen learner's own config dataclass (from the learner table,
:mod:`mamlx.registry`). It is built and saved flat, so one call or one command line
names every setting::

    FewShotConfig(algo="maml", ways=20, inner_lr=0.1)   # inner_lr is MAML's own setting
    config.inner_lr                                      # read through to config.learner
    config.to_dict()                                     # flat, saved as config.json

A setting that belongs neither to the data set nor to the chosen learner is refused with
an error naming it, the learner's settings and the learners that do have it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import optax

from mamlx import registry
from mamlx._checks import check_bool, check_count
from mamlx.algorithms.base import TASK_MAPS
from mamlx.algorithms.reptile import carried_state_outer
from mamlx.models.conv import IMPLS as CONV_IMPLS
from mamlx.models.conv4 import READOUTS


def set_counts(obj: Any, low: int, *names: str) -> None:
    """Check integer fields (``>= low``) of a frozen dataclass; store them as Python ints."""
    for name in names:
        object.__setattr__(obj, name, check_count(name, getattr(obj, name), low=low))


def check_positive_fields(obj: Any, *names: str, zero: bool = False) -> None:
    """Finite numbers ``> 0`` (``>= 0`` with ``zero=True``), bools refused."""
    for name in names:
        v = getattr(obj, name)
        ok = isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)
        ok = ok and math.isfinite(v) and (v >= 0 if zero else v > 0)
        if not ok:
            bound = ">= 0" if zero else "positive"
            raise ValueError(f"{name} must be a {bound} finite number, got {v!r}")
        object.__setattr__(obj, name, float(v))


def check_bools(obj: Any, *names: str) -> None:
    """``True``/``False`` only (the string ``"False"`` would read as true)."""
    for name in names:
        object.__setattr__(obj, name, check_bool(name, getattr(obj, name)))


def check_choices(obj: Any, choices: dict[str, tuple]) -> None:
    for name, allowed in choices.items():
        if getattr(obj, name) not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {getattr(obj, name)!r}")


@dataclass(frozen=True, init=False)
class RunConfig:
    """Base of the data sets' run configurations (see the module docstring).

    Subclasses declare the data set's shared settings as dataclass fields with its
    defaults, ``task`` (the data set's name in :mod:`mamlx.registry`) and
    ``learner_defaults``: values for learner settings that differ on this data set
    (for example MAML's inner learning rate on mini-ImageNet), applied where the
    chosen learner has such a setting.
    """

    algo: str = "maml"
    learner: Any = None
    task: str = field(default="", init=False)
    learner_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **settings: Any):
        cls = type(self)
        own = {f.name: f for f in dataclasses.fields(cls) if f.init}
        algo = settings.pop("algo", own["algo"].default)
        entry = registry.get_learner(algo)
        data = registry.get_dataset(cls.__dataclass_fields__["task"].default)
        if data.family not in entry.families:
            raise ValueError(
                f"learner {algo!r} does not take {data.name} ({data.family}) data; learners "
                f"for {data.name}: {registry.learner_names(data.family)}"
            )
        learner = settings.pop("learner", None)
        names = entry.field_names()
        mine = {k: settings.pop(k) for k in list(settings) if k in names}
        for k in settings:
            if k not in own:
                have = registry.learners_with_field(k)
                where = f"; it is a setting of {have}" if have else ""
                raise ValueError(
                    f"{k!r} is not a setting of {data.name} runs with learner {algo!r}{where}. "
                    f"{algo} settings: {list(names)}; {data.name} settings: "
                    f"{sorted(n for n in own if n not in ('algo', 'learner'))}"
                )
        if dataclasses.is_dataclass(learner) and not isinstance(learner, entry.config):
            # Another learner's settings (``dataclasses.replace(config, algo=...)``): keep the
            # ones this learner shares with it (e.g. inner_lr), the rest are dropped.
            learner = {k: v for k, v in dataclasses.asdict(learner).items() if k in names}
        if isinstance(learner, dict):
            mine = {**learner, **mine}
            learner = None
        if learner is None:
            defaults = {k: v for k, v in cls.learner_defaults.items() if k in names}
            learner = entry.config(**{**defaults, **mine})
        elif isinstance(learner, entry.config):
            learner = dataclasses.replace(learner, **mine) if mine else learner
        else:
            raise ValueError(
                f"learner must be a {entry.config.__name__} for algo {algo!r}, got "
                f"{type(learner).__name__}"
            )
        object.__setattr__(self, "algo", algo)
        object.__setattr__(self, "learner", learner)
        for name, f in own.items():
            if name in ("algo", "learner"):
                continue
            if name in settings:
                value = settings[name]
            elif f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
            else:
                value = f.default
            object.__setattr__(self, name, value)
        object.__setattr__(self, "task", data.name)
        self.__post_init__()

    def __post_init__(self) -> None:
        set_counts(self, 0, "steps")
        set_counts(self, 1, "meta_batch")
        check_positive_fields(self, "meta_lr")
        check_choices(self, {"task_map": TASK_MAPS})

    def __getattr__(self, name: str) -> Any:
        # Only called for names that are not fields: read the learner's settings through.
        if name.startswith("__") or name == "learner":
            raise AttributeError(name)
        learner = self.__dict__.get("learner")
        if learner is not None and hasattr(learner, name):
            return getattr(learner, name)
        raise AttributeError(
            f"{type(self).__name__} with learner {self.__dict__.get('algo')!r} has no "
            f"setting {name!r}"
        )

    @property
    def entry(self) -> registry.LearnerEntry:
        """The learner's row of the learner table."""
        return registry.get_learner(self.algo)

    @property
    def eval_steps(self) -> int | None:
        """Adaptation steps at test time (``None``: the learner has no inner loop)."""
        return getattr(self.learner, "eval_inner_steps", None)

    def to_dict(self) -> dict:
        """Flat settings (shared and the learner's) and ``task``: ``config.json``."""
        out = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "learner"
        }
        out.update(dataclasses.asdict(self.learner))
        return out


def _check_rates(obj: Any) -> None:
    c = obj.clip_norm
    if not (isinstance(c, (int, float)) and math.isfinite(c) and c >= 0):
        raise ValueError(f"clip_norm must be a finite number >= 0 (0: no clipping), got {c!r}")
    low = getattr(obj, "min_meta_lr", 0.0)
    if not (isinstance(low, (int, float)) and math.isfinite(low) and 0 <= low <= obj.meta_lr):
        raise ValueError(
            f"min_meta_lr must be a finite number in [0, meta_lr={obj.meta_lr}], got {low!r}"
        )


@dataclass(frozen=True, init=False)
class SinusoidConfig(RunConfig):
    """Sine-wave regression, defaults from Finn et al. (2017), Sec. 5.1 and Appendix A.1.

    K = 10 shots, one inner SGD step with α = 0.01, meta-batch 25, Adam with
    β = 1e-3, 70,000 meta-steps, MLP 1-40-40-1 with ReLU.

    Attributes:
      shots: support points per task (K).
      steps: meta-training steps.
      meta_batch: tasks per meta-step.
      meta_lr: Adam's learning rate.
      seed: initialisation and task seed.
      hidden: hidden layer widths of the MLP.
      task_map: ``"vmap"``, ``"map"`` or ``"auto"`` over the tasks of a batch.
    """

    shots: int = 10
    steps: int = 70_000
    meta_batch: int = 25
    meta_lr: float = 1e-3
    seed: int = 0
    hidden: tuple[int, ...] = (40, 40)
    task_map: str = "vmap"
    task: str = field(default="sinusoid", init=False)
    CHOICES: ClassVar[dict[str, tuple]] = {"task_map": TASK_MAPS}
    learner_defaults: ClassVar[dict[str, Any]] = {"inner_lr": 0.01, "inner_steps": 1}

    def __post_init__(self):
        super().__post_init__()
        set_counts(self, 1, "shots")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))


@dataclass(frozen=True, init=False)
class FewShotConfig(RunConfig):
    """N-way K-shot image classification on Omniglot.

    Defaults are MAML's Omniglot 5-way 1-shot setting (Finn et al. 2017, Sec. 5.2 and
    the reference code): K query examples per class, meta-batch 32, Adam 1e-3, 60,000
    meta-steps, a Conv-4 of 64 filters with stride-2 convolutions, 1200 / 423 character
    split with 90-degree rotations as new training classes; the learner's own settings
    (MAML: inner lr 0.4, 1 inner step, 3 at test) live in its config (``learner``).
    See :mod:`mamlx.presets` for the papers' tables.

    Attributes:
      ways, shots, queries: classes per task, support and query examples per class.
      steps, meta_batch: meta-training steps and tasks per step.
      meta_lr, meta_lr_schedule, halve_every: outer learning rate; ``"constant"``,
        ``"linear"`` decay to 0 or ``"cosine"`` annealing to ``min_meta_lr`` (MAML++);
        with ``halve_every > 0`` it is halved every that many steps (Snell et al. 2017).
      min_meta_lr: the outer learning rate at the end of a cosine schedule.
      clip_norm: clip the meta-gradient's global norm (0: off).
      seed: initialisation, task and split seed.
      filters: channels of every Conv-4 convolution (classifier and embedding).
      backbone: the classifier of the optimization-based learners: ``"conv4"`` or
        ``"mlp"``, the fully connected 256-128-64-64 network with batch norm on
        flattened images ("MAML, no conv", Finn et al. 2017, Table 1).
      pool, readout, conv_impl: the classifier Conv-4 of the optimization-based
        learners: stride-2 convolutions or max-pooling; the head reads the flattened
        last map (``"flatten"``) or its spatial mean (``"mean"``, MAML's Omniglot code);
        the convolution (``""``: picked by learner and backend). Metric learners use
        the max-pooled Conv-4 embedding of Snell et al. and refuse other values.
      task_map: ``"auto"`` loops over tasks on one CPU device and vectorizes elsewhere.
      data_dir: the data folder (``""``: the download cache).
      cache_dir: where downloads and preprocessed arrays are cached (``""``:
        ``~/.cache/mamlx``; the ``mamlx`` command's default is ``$MAMLX_CACHE``).
      split: ``"vinyals"`` (1200 / 423 characters), ``"background"`` (Lake et al.'s
        background / evaluation alphabets) or ``"ravi"`` (mini-ImageNet).
      rotate: 90-degree rotations of training classes as new classes (Vinyals split).
      eval_rotate: count the rotations of validation and test characters as classes
        too, as MAML's reference code and Snell et al. (2017, Sec. 3.1) do.
      image_size: side of the square images.
      resize: Omniglot 105 -> 28 filter: ``"lanczos"`` (gray edges) or ``"nearest"``
        (the binary images of MAML's own script).
      val_every, val_tasks: validation interval (steps) and tasks.
      eval_tasks, eval_shots: test tasks, test shots (0: ``shots``).
      eval_ways, eval_queries: test ways and queries per class (0: ``ways``,
        ``queries``); metric learners may train on more ways than they are tested on
        (Snell et al. train 60-way), a classifier's head has ``ways`` outputs.
      preset: the named setting the run started from (:mod:`mamlx.presets`).
    """

    ways: int = 5
    shots: int = 1
    queries: int = 1
    steps: int = 60_000
    meta_batch: int = 32
    meta_lr: float = 1e-3
    meta_lr_schedule: str = "constant"
    min_meta_lr: float = 0.0
    halve_every: int = 0
    clip_norm: float = 0.0
    seed: int = 0
    filters: int = 64
    backbone: str = "conv4"
    pool: str = "stride"
    readout: str = "flatten"
    conv_impl: str = ""
    task_map: str = "auto"
    data_dir: str = ""
    cache_dir: str = ""
    split: str = "vinyals"
    rotate: bool = True
    eval_rotate: bool = False
    image_size: int = 28
    resize: str = "lanczos"
    val_every: int = 2000
    val_tasks: int = 200
    eval_tasks: int = 600
    eval_shots: int = 0
    eval_ways: int = 0
    eval_queries: int = 0
    preset: str = ""
    task: str = field(default="omniglot", init=False)
    CHOICES: ClassVar[dict[str, tuple]] = {
        "backbone": ("conv4", "mlp"),
        "pool": ("stride", "max"),
        "meta_lr_schedule": ("constant", "linear", "cosine"),
        "split": ("vinyals", "background", "ravi"),
        "conv_impl": ("", *CONV_IMPLS),
        "resize": ("lanczos", "nearest"),
        "readout": READOUTS,
        "task_map": TASK_MAPS,
    }

    def __post_init__(self):
        super().__post_init__()
        for name in ("data_dir", "cache_dir"):  # absolute: eval and resume work from anywhere
            if getattr(self, name):
                path = os.path.abspath(os.path.expanduser(os.fspath(getattr(self, name))))
                object.__setattr__(self, name, path)
        set_counts(self, 1, "ways", "shots", "queries", "filters", "image_size")
        set_counts(self, 1, "val_every", "val_tasks", "eval_tasks")
        set_counts(self, 0, "eval_shots", "eval_ways", "eval_queries", "halve_every")
        check_bools(self, "rotate", "eval_rotate")
        _check_rates(self)
        check_choices(self, self.CHOICES)
        if self.entry.network == "classifier" and self.eval_ways not in (0, self.ways):
            raise ValueError(
                f"eval_ways={self.eval_ways}: {self.algo!r} adapts a classifier with "
                f"ways={self.ways} outputs, so it is tested at ways={self.ways} (eval_ways 0)"
            )
        defaults = {f.name: f.default for f in dataclasses.fields(type(self))}
        if self.backbone == "mlp":
            for name in ("pool", "readout", "conv_impl"):
                if getattr(self, name) != defaults[name]:
                    raise ValueError(
                        f"{name}={getattr(self, name)!r} sets the Conv-4; backbone='mlp' is "
                        f"the fully connected network (leave {name} at {defaults[name]!r})"
                    )
        if self.entry.network == "embedding":
            for name in ("backbone", "pool", "readout", "conv_impl"):
                if getattr(self, name) != defaults[name]:
                    raise ValueError(
                        f"{name}={getattr(self, name)!r} sets the classifier Conv-4 of the "
                        f"optimization-based learners; {self.algo!r} uses the max-pooled "
                        f"Conv-4 embedding (leave {name} at {defaults[name]!r})"
                    )


@dataclass(frozen=True, init=False)
class MiniImageNetConfig(FewShotConfig):
    """mini-ImageNet 5-way, MAML's setting (Finn et al. 2017, Sec. 5.2): 32 filters,
    2x2 max-pooling, 15 queries per class, meta-batch 4, Ravi & Larochelle's 64 / 16 / 20
    class split, 84x84 images; MAML's inner lr 0.01, 5 inner steps (10 at test). Needs
    ``data_dir`` with the images and the split CSVs."""

    queries: int = 15
    meta_batch: int = 4
    filters: int = 32
    pool: str = "max"
    split: str = "ravi"
    rotate: bool = False
    image_size: int = 84
    task: str = field(default="miniimagenet", init=False)
    # Ravi & Larochelle resized the RGB images with Lanczos.
    CHOICES: ClassVar[dict[str, tuple]] = {**FewShotConfig.CHOICES, "resize": ("lanczos",)}
    learner_defaults: ClassVar[dict[str, Any]] = {
        "inner_lr": 0.01,
        "inner_steps": 5,
        "eval_inner_steps": 10,
    }


def config_class(task: str) -> type:
    """The run configuration class of a registered data set."""
    return registry.get_dataset(task).config


def config_from_dict(d: dict) -> RunConfig:
    """Rebuild a configuration saved by ``to_dict`` (the ``task`` key picks the class).

    Runs saved before the learner table held every learner's settings in one flat
    configuration; settings that the run's learner does not have are dropped when
    they are among those old shared names (:data:`LEGACY_FIELDS`).
    """
    d = dict(d)
    task = d.pop("task", None)
    if task not in registry.dataset_names():
        raise ValueError(
            f"unknown task {task!r} in configuration; known: {registry.dataset_names()}"
        )
    cls = config_class(task)
    entry = registry.get_learner(d.get("algo", "maml"))
    own = {f.name for f in dataclasses.fields(cls) if f.init}
    for k in [k for k in d if k in LEGACY_FIELDS and k not in own]:
        if k not in entry.field_names():
            del d[k]
    for k, v in d.items():
        if isinstance(v, list):
            d[k] = tuple(v)
    return cls(**d)


#: Learner settings that configurations saved before the learner table held for every
#: learner (a MAML run's config.json also has ``lstm_hidden``).
LEGACY_FIELDS = (
    "inner_steps",
    "eval_inner_steps",
    "inner_lr",
    "inner_opt",
    "lstm_hidden",
    "second_order",
    "transductive",
)


def outer_optimizer(config: RunConfig) -> optax.GradientTransformation:
    """The outer optimizer of a run: the learner's (Adam, or SGD on Reptile's
    pseudo-gradient) at ``meta_lr``, decayed linearly to 0 or by a cosine to ``min_meta_lr``
    (``meta_lr_schedule``) or
    halved every ``halve_every`` steps, after clipping the meta-gradient to
    ``clip_norm`` (Ravi & Larochelle 2017 clip the meta-learner's gradients)."""
    lr: Any = config.meta_lr
    schedule = getattr(config, "meta_lr_schedule", "constant")
    if schedule == "linear":
        lr = optax.linear_schedule(config.meta_lr, 0.0, max(config.steps, 1))
    elif schedule == "cosine":  # MAML++ (Antoniou et al. 2019): down to min_meta_lr
        low = getattr(config, "min_meta_lr", 0.0)
        lr = optax.cosine_decay_schedule(config.meta_lr, max(config.steps, 1), low / config.meta_lr)
    elif getattr(config, "halve_every", 0):
        lr = optax.exponential_decay(config.meta_lr, config.halve_every, 0.5, staircase=True)
    opt = optax.sgd(lr) if config.entry.outer == "sgd" else optax.adam(lr)
    if getattr(config, "clip_norm", 0) > 0:
        opt = optax.chain(optax.clip_by_global_norm(config.clip_norm), opt)
    if not getattr(config, "reset_inner_state", True):  # Reptile's carried inner state
        opt = carried_state_outer(opt)
    return opt
