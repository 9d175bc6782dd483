"""The ``mamlx`` command: ``mamlx train TASK ...`` and ``mamlx eval RUN_DIR ...``.

Flags of ``train`` are generated from the fields of the task's configuration
dataclass (see :mod:`mamlx.experiments`), so every setting of a run can be
given on the command line and is saved in ``RUN_DIR/config.json``.

The command makes the process-wide settings that ``import mamlx`` never makes:
it tunes glibc's malloc before JAX computes anything
(:func:`mamlx.runtime.tune_host_allocator`; ``mamlx --no-tune-malloc ...`` or
``MAMLX_TUNE_MALLOC=0`` skips it), turns on JAX's persistent compilation cache,
and takes defaults from ``MAMLX_*`` environment variables (:func:`_env_defaults`).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from mamlx import registry  # the tables: read only when a command needs them


class _Deferred:
    """A module imported on first attribute access: `mamlx --help` loads no JAX."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        import importlib

        return getattr(importlib.import_module(self._name), attr)


checkpoint = _Deferred("mamlx.checkpoint")
_config = _Deferred("mamlx.config")
_experiments = _Deferred("mamlx.experiments")
_presets = _Deferred("mamlx.presets")

# How a run is executed (not what it computes): saved in RUN_DIR/run.json, restored on resume.
RUN_DEFAULTS = {
    "chunk": 200,
    "checkpoint_every": 5000,
    "devices": 1,
    "cpu_devices": 0,
    "distributed": False,
    "progress": True,
    "compile_cache": True,
    "max_minutes": 0.0,
    "matmul_precision": "default",
}
# --matmul-precision -> jax_default_matmul_precision. "default" leaves JAX's own (TF32 on recent
# NVIDIA GPUs, float32 on CPUs). JAX's level named "bfloat16" is its DEFAULT precision, TF32 on
# those GPUs, so bfloat16 products are asked for by their dot algorithm (bfloat16 inputs,
# float32 accumulation).
MATMUL_PRECISION_CONFIG = {
    "default": None,
    "float32": "float32",
    "tensorfloat32": "tensorfloat32",
    "bfloat16": "BF16_BF16_F32",
}
MATMUL_PRECISIONS = tuple(MATMUL_PRECISION_CONFIG)


def set_matmul_precision(level: str, backend: str | None = None) -> None:
    """Make ``level`` (one of :data:`MATMUL_PRECISIONS`) the precision of every float32 matrix
    product and convolution this process compiles from now on (``jax_default_matmul_precision``,
    see :data:`MATMUL_PRECISION_CONFIG`).

    The bfloat16 dot algorithm reaches matrix products (the ``'patches'`` convolution, dense
    layers); JAX lowers XLA's own convolution (``conv_impl='xla'``) at DEFAULT precision under
    it, which is TF32 on recent GPUs.

    ``backend`` (default: JAX's default backend) is where the products will run: XLA's CPU
    backend computes ``tensorfloat32`` as float32 and has no bfloat16 dot algorithm for every
    product (it fails to compile), so ``bfloat16`` is refused there.
    """
    if level not in MATMUL_PRECISION_CONFIG:
        raise ValueError(f"matmul precision must be one of {MATMUL_PRECISIONS}, got {level!r}")
    import jax

    if level == "bfloat16" and (backend or jax.default_backend()) == "cpu":
        raise ValueError(
            "--matmul-precision bfloat16 needs a GPU (or TPU): XLA's CPU backend cannot compile "
            "bfloat16 dot algorithms for all of the network's products; on a CPU use default"
        )
    jax.config.update("jax_default_matmul_precision", MATMUL_PRECISION_CONFIG[level])


def _saved_precision(run_dir: Path) -> str:
    """The matrix-product precision a run trained with (its run.json; older runs: default)."""
    saved = run_dir / "run.json"
    if not saved.is_file():
        return "default"
    try:
        return json.loads(saved.read_text()).get("matmul_precision", "default")
    except json.JSONDecodeError as e:
        raise ValueError(f"{saved} is not valid JSON ({e}); delete it to use the defaults") from e


def _use_run_precision(run_dir: Path, given: str | None = None) -> str:
    """Set the matrix-product precision for using a trained run: ``given`` (a flag), else the
    one the run trained with; a bfloat16 run on a CPU (which cannot compile bfloat16
    products) runs at the default, with a note on stderr. Returns the level set."""
    import jax

    level = given or _saved_precision(run_dir)
    if not given and level == "bfloat16" and jax.default_backend() == "cpu":
        print(
            f"note: {run_dir} trained with bfloat16 products, a CPU runs it at float32",
            file=sys.stderr,
        )
        level = "default"
    set_matmul_precision(level)
    return level


def _env_defaults() -> dict[str, Any]:
    """The CLI's defaults from ``MAMLX_*`` environment variables (the library reads none).

    Returns:
        ``conv_impl``: ``$MAMLX_CONV_IMPL`` (``None`` if unset), ``data_dir``:
        ``$MAMLX_DATA_DIR`` (``None`` if unset), ``cache``: ``$MAMLX_CACHE`` or
        ``~/.cache/mamlx``, ``jax_cache``: ``$MAMLX_JAX_CACHE`` or ``<cache>/jax``,
        ``tune_malloc``: ``False`` where ``MAMLX_TUNE_MALLOC=0``. Empty means unset.
    """
    env = os.environ
    cache = env.get("MAMLX_CACHE") or str(Path.home() / ".cache" / "mamlx")
    return {
        "conv_impl": env.get("MAMLX_CONV_IMPL") or None,
        "data_dir": env.get("MAMLX_DATA_DIR") or None,
        "cache": cache,
        "jax_cache": env.get("MAMLX_JAX_CACHE") or str(Path(cache) / "jax"),
        "tune_malloc": env.get("MAMLX_TUNE_MALLOC", "1") != "0",
    }


def enable_compilation_cache(path: str | None = None) -> None:
    """Turn on JAX's persistent compilation cache (second runs skip most compiling).

    Args:
        path: Cache folder; default ``_env_defaults()["jax_cache"]``
            (``$MAMLX_JAX_CACHE``, else ``$MAMLX_CACHE/jax``, else ``~/.cache/mamlx/jax``).
    """
    import jax

    path = path or _env_defaults()["jax_cache"]
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def field_help(cls: type) -> dict[str, str]:
    """One line of help per field, from the ``Attributes:`` section of a dataclass's
    docstring (``name: text`` or ``a, b, c: text`` for fields described together)."""
    out: dict[str, str] = {}
    doc = (cls.__doc__ or "").split("Attributes:", 1)
    if len(doc) < 2:
        return out
    names: list[str] = []
    for line in doc[1].splitlines():
        text = line.strip()
        head, sep, rest = text.partition(": ")
        if sep and all(n.strip().isidentifier() for n in head.split(",")):
            names = [n.strip() for n in head.split(",")]
            for n in names:
                out[n] = rest
        elif text and names:
            for n in names:
                out[n] += " " + text
        else:
            names = []
    return {k: v.split(". ")[0].rstrip(".") for k, v in out.items()}


def _flag_kwargs(f: dataclasses.Field, help_text: str, choices: tuple | None) -> dict:
    default = f.default
    shown = "none" if default in ("", None) else default
    kw: dict[str, Any] = {
        "default": argparse.SUPPRESS,  # absent unless given (never overwrites `train --steps N`)
        "help": f"{help_text} (default: {shown})".strip(),
    }
    if choices:
        kw["choices"] = [c for c in choices if c != ""] if default == "" else list(choices)
    if isinstance(default, bool):
        kw["action"] = argparse.BooleanOptionalAction
    elif isinstance(default, tuple):
        kw.update(nargs="+", type=int)
    elif isinstance(default, (int, float, str)):
        kw["type"] = type(default)
    return kw


def _add_config_flags(parser: argparse.ArgumentParser, task: str) -> None:
    """Flags of a data set's run configuration and of every learner that takes it."""
    data = registry.get_dataset(task)
    cls = data.config
    helps = field_help(cls)
    choices = getattr(cls, "CHOICES", {})
    seen = set()
    for f in dataclasses.fields(cls):
        if not f.init or f.name == "learner":
            continue
        seen.add(f.name)
        flag = "--" + f.name.replace("_", "-")
        if f.name == "algo":
            names = registry.learner_names(data.family)
            parser.add_argument(
                flag,
                choices=names,
                default=argparse.SUPPRESS,
                help="the learner (default: maml; `mamlx list` describes each)",
            )
            continue
        if f.name == "preset":
            mine = sorted(n for n, p in _presets.PRESETS.items() if p[0] == task)
            parser.add_argument(
                flag,
                metavar="NAME",
                choices=mine,
                default=argparse.SUPPRESS,
                help="published setting to start from (`mamlx list` shows each): "
                + ", ".join(mine),
            )
            continue
        parser.add_argument(flag, **_flag_kwargs(f, helps.get(f.name, ""), choices.get(f.name)))
    group = parser.add_argument_group("learners' own settings (each applies to the learners named)")
    for name in registry.learner_names(data.family):
        entry = registry.get_learner(name)
        for f in dataclasses.fields(entry.config):
            if f.name in seen:
                continue
            seen.add(f.name)
            users = [
                n
                for n in registry.learners_with_field(f.name)
                if n in registry.learner_names(data.family)
            ]
            helps = field_help(entry.config)
            kw = _flag_kwargs(
                f, helps.get(f.name, ""), getattr(entry.config, "CHOICES", {}).get(f.name)
            )
            kw["help"] = f"[{', '.join(users)}] " + kw["help"]
            if f.name in cls.learner_defaults:  # the data set's own value for this setting
                kw["help"] += f"; {task}: {cls.learner_defaults[f.name]}"
            group.add_argument("--" + f.name.replace("_", "-"), **kw)


def _add_run_flags(parser: argparse.ArgumentParser, default: Any = None) -> None:
    """Flags of how a run executes. ``default=argparse.SUPPRESS`` on the task sub-parsers,
    so they never overwrite a value given before the task name (``train --resume X task``)."""
    d = RUN_DEFAULTS
    parser.add_argument(
        "--resume", metavar="RUN_DIR", default=default, help="continue the run in RUN_DIR"
    )
    parser.add_argument(
        "--chunk", type=int, default=default, help=f"meta-steps per compiled call ({d['chunk']})"
    )
    parser.add_argument(
        "--devices",
        type=int,
        default=default,
        help="shard the task batch over this many devices (0: all devices of all hosts; "
        "default 1, all with --distributed, the CPU's with --cpu-devices)",
    )
    parser.add_argument(
        "--cpu-devices",
        type=int,
        default=default,
        help="split a CPU into this many JAX devices and shard the task batch over them "
        "(each device loops over its own tasks; 2 on a 2-core CPU: 1.09-1.24x the tasks/s of one "
        "device in one run, 0.91-1.24x in another, benchmarks/results/throughput_cpu_devices*.md); "
        "params and data are copied to each (default 0: JAX's one CPU device; refused when JAX computes on an accelerator)",
    )
    parser.add_argument(
        "--distributed",
        action=argparse.BooleanOptionalAction,
        default=default,
        help="call jax.distributed.initialize() first (several processes or hosts; "
        "start the same command in each, with the next three flags)",
    )
    parser.add_argument(
        "--coordinator-address",
        metavar="HOST:PORT",
        default=default,
        help="with --distributed: process 0's address, reachable from every process "
        "(default: $JAX_COORDINATOR_ADDRESS; found by JAX under SLURM, Open MPI, on TPU)",
    )
    parser.add_argument(
        "--num-processes",
        type=int,
        default=default,
        help="with --distributed: how many processes (default: $JAX_NUM_PROCESSES)",
    )
    parser.add_argument(
        "--process-id",
        type=int,
        default=default,
        help="with --distributed: this process's index, 0 writes the run (default: "
        "$JAX_PROCESS_ID)",
    )
    parser.add_argument(
        "--heartbeat-timeout",
        type=int,
        default=default,
        help="with --distributed: seconds after which a silent process counts as dead and "
        "the others stop with an error (default: JAX's, 100)",
    )
    parser.add_argument(
        "--checkpoint-every", type=int, default=default, help=f"({d['checkpoint_every']})"
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=default,
        help="show a progress bar with the live loss (default: on)",
    )
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=default,
        help="wall-clock training budget of this invocation: stop after the chunk that "
        "passes it, validate and checkpoint (0: none; default 0)",
    )
    parser.add_argument(
        "--compile-cache",
        action=argparse.BooleanOptionalAction,
        default=default,
        help="use JAX's persistent compilation cache (default: on)",
    )
    parser.add_argument(
        "--matmul-precision",
        choices=MATMUL_PRECISIONS,
        default=default,
        help="precision of float32 matrix products (and so of the patches convolution): "
        "bfloat16 (bfloat16 inputs, float32 sums) and tensorfloat32 are faster on GPUs, float32 "
        "is exact (default: JAX's, TF32 on recent NVIDIA GPUs; bfloat16 does not reach XLA's own "
        "convolution, --conv-impl xla, which stays at TF32; a CPU computes tensorfloat32 as "
        "float32 and refuses bfloat16)",
    )


def _run_settings(args: argparse.Namespace, run_dir: Path, resume: bool) -> argparse.Namespace:
    """Defaults, then (on resume) the run's saved ``run.json``, then the flags given."""
    settings = dict(RUN_DEFAULTS)
    saved = run_dir / "run.json"
    if resume and saved.is_file():  # "resolved" (what this machine chose) is not a setting
        settings.update({k: v for k, v in json.loads(saved.read_text()).items() if k in settings})
    given = {k: getattr(args, k, None) for k in RUN_DEFAULTS}
    settings.update({k: v for k, v in given.items() if v is not None})
    if given["devices"] is None and settings["distributed"] and not saved.is_file():
        settings["devices"] = 0  # a multi-host launch shards over every device by default
    if given["devices"] is None and (given["cpu_devices"] or 0) > 1:
        settings["devices"] = 0  # over the CPU's devices (of every host, with --distributed)
    for name in ("chunk", "checkpoint_every"):
        if settings[name] <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {settings[name]}")
    if not (math.isfinite(settings["max_minutes"]) and settings["max_minutes"] >= 0):
        raise ValueError(
            f"--max-minutes must be >= 0 (0: no budget), got {settings['max_minutes']}"
        )
    if settings["devices"] < 0:
        raise ValueError(f"--devices must be >= 0 (0: all devices), got {settings['devices']}")
    if settings["cpu_devices"] < 0:
        raise ValueError(
            f"--cpu-devices must be >= 0 (0: leave JAX's one CPU device), got "
            f"{settings['cpu_devices']}"
        )
    if settings["cpu_devices"] > 1 and settings["devices"] == 1:
        raise ValueError(
            f"--cpu-devices {settings['cpu_devices']} with --devices 1 would train on one device "
            "and leave the others idle: drop --devices (it then shards over all of them) or give "
            "--cpu-devices 0"
        )
    settings["cpu_devices_given"] = given["cpu_devices"] is not None
    return argparse.Namespace(**settings)


def _distributed_args(args: argparse.Namespace) -> dict[str, Any]:
    """Where this process sits in a ``--distributed`` launch: the flags given, else
    ``$JAX_COORDINATOR_ADDRESS``, ``$JAX_NUM_PROCESSES``, ``$JAX_PROCESS_ID`` (this JAX
    reads only the first itself), else ``None`` for JAX to find (SLURM, Open MPI, TPU).
    Launch settings, not run settings: not saved in ``run.json``."""
    env = os.environ
    out: dict[str, Any] = {"coordinator_address": None, "num_processes": None, "process_id": None}
    for name in out:
        value = getattr(args, name, None)
        var = "JAX_" + name.upper()
        text = env.get(var, "")
        if value is None and text:
            if name != "coordinator_address" and not text.isdigit():
                raise ValueError(f"${var} must be a whole number, got {text!r}")
            value = text if name == "coordinator_address" else int(text)
        out[name] = value
    timeout = getattr(args, "heartbeat_timeout", None)
    if timeout is not None:
        if timeout < 1:
            raise ValueError(f"--heartbeat-timeout must be >= 1 second, got {timeout}")
        out["heartbeat_timeout"] = timeout
    return out


def _note_resolved_changes(path: Path, resolved: dict) -> None:
    """Say when a resumed run resolves its defaults differently (e.g. now on another backend)."""
    import jax

    if not path.is_file() or jax.process_index() != 0:
        return
    before = json.loads(path.read_text()).get("resolved")
    before = before if isinstance(before, dict) else {}  # runs from before "resolved" existed
    changed = {k: (before[k], v) for k, v in resolved.items() if k in before and before[k] != v}
    if {"conv_impl", "task_map"} & changed.keys():
        print(
            "note: this run now resolves "
            + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
            + " (the same function; float rounding differs from the earlier steps)"
        )


def build_parser(tables: bool = True) -> argparse.ArgumentParser:
    """The ``mamlx`` parser; ``tables=False`` leaves out ``train``'s data-set sub-commands
    (they read the learner and data-set tables, which import JAX)."""
    parser = argparse.ArgumentParser(prog="mamlx", description="Meta-learning in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train",
        help="meta-train a learner on a data set",
        description="mamlx train DATASET [--algo NAME] [--preset NAME] [flags]; "
        "mamlx train --resume RUN_DIR [--steps N]. `mamlx train DATASET --help` lists "
        "the data set's settings and its learners' own.",
    )
    _add_run_flags(train)
    train.add_argument(
        "--steps",
        type=int,
        default=argparse.SUPPRESS,
        help="with --resume RUN_DIR: train on to this many steps in all",
    )
    tasks = train.add_subparsers(dest="task", metavar="DATASET")
    for name in registry.dataset_names() if tables else ():
        entry = registry.get_dataset(name)
        p = tasks.add_parser(name, help=entry.description, description=entry.description)
        _add_config_flags(p, name)
        p.add_argument("--out", help="run directory (default: runs/<task>-<algo>-<seed>)")
        _add_run_flags(p, default=argparse.SUPPRESS)
    ev = sub.add_parser("eval", help="evaluate trained runs on held-out tasks")
    ev.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    ev.add_argument(
        "--tasks",
        type=int,
        help="held-out tasks (default: 1000 sine, the run's eval_tasks few-shot)",
    )
    ev.add_argument(
        "--shots",
        type=int,
        nargs="+",
        help="support examples per task: sine runs, one row each (default: 5 10 20); "
        "few-shot runs, one value per class (default: the run's eval_shots or shots)",
    )
    ev.add_argument("--max-steps", type=int, help="sine runs: report 0..N inner steps (default 10)")
    ev.add_argument(
        "--ways",
        type=int,
        help="few-shot runs: classes per test task (default: the run's eval_ways or ways; "
        "learners that adapt a classifier head are tested at their training ways)",
    )
    ev.add_argument(
        "--queries",
        type=int,
        help="query points per task: sine runs (default 100); few-shot runs, per class "
        "(default: the run's eval_queries or queries)",
    )
    ev.add_argument("--seed", type=int, default=12345, help="seed of the held-out tasks")
    ev.add_argument(
        "--matmul-precision",
        choices=MATMUL_PRECISIONS,
        help="precision of float32 matrix products (default: the one each run trained with)",
    )
    ev.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="few-shot runs: show a progress bar over the test tasks (default: on)",
    )
    ev.add_argument("--figure", help="PNG path (default: RUN_DIR/sinusoid_fits.png)")
    ev.add_argument(
        "--data-dir", help="few-shot runs: data folder, if moved since training (default: saved)"
    )
    ev.add_argument(
        "--eval-rotate",
        action=argparse.BooleanOptionalAction,
        help="few-shot runs: count the test characters' 90-degree rotations as classes, or not "
        "(default: as the run was configured)",
    )
    ls = sub.add_parser("list", help="the learners, data sets and presets, as tables")
    ls.add_argument("what", nargs="?", choices=["learners", "datasets", "presets"])
    sh = sub.add_parser(
        "show", help="a run's settings, step, best validation, checkpoint and curves (PNG)"
    )
    sh.add_argument("run_dir", metavar="RUN_DIR")
    sh.add_argument("--figure", help="PNG path of the curves (default: RUN_DIR/curves.png)")
    pr = sub.add_parser(
        "predict",
        help="classify image files with a trained run, adapted on your labelled examples",
        description="mamlx predict RUN_DIR --support DIR --query DIR: adapt the run's learner on "
        "the support images (one sub-folder per class, named after it) and print one line "
        "per query image: path<TAB>predicted class. Images are preprocessed as the run's "
        "training data (mamlx.runs.read_images).",
    )
    pr.add_argument("run_dir", metavar="RUN_DIR")
    pr.add_argument(
        "--support",
        required=True,
        metavar="DIR",
        help="one sub-folder per class, named after the class, holding its example images",
    )
    pr.add_argument(
        "--query",
        required=True,
        metavar="DIR",
        help="image files to classify; files in sub-folders named after a class are also "
        "scored against it (accuracy)",
    )
    pr.add_argument(
        "--steps",
        type=int,
        help="adaptation steps (default: the run's eval_inner_steps; gradient-based learners)",
    )
    em = sub.add_parser(
        "embed",
        help="metric learners: embeddings of image files, as an (N, D) .npy array",
        description="mamlx embed RUN_DIR --images DIR --out FILE.npy: the run's embedding "
        "network applied to the images (one batch); prints the files in row order.",
    )
    em.add_argument("run_dir", metavar="RUN_DIR")
    em.add_argument(
        "--images", required=True, metavar="DIR", help="image files (and sub-folders of them)"
    )
    em.add_argument("--out", required=True, metavar="FILE.npy", help="where to write (N, D)")
    for p in (pr, em):
        p.add_argument(
            "--latest",
            action="store_true",
            help="use the latest checkpoint (default: best.npz, the best validation, if any)",
        )
        p.add_argument(
            "--matmul-precision",
            choices=MATMUL_PRECISIONS,
            help="precision of float32 matrix products (default: the one the run trained with)",
        )
    return parser


def _config_from_args(task: str, args: argparse.Namespace):
    """The configuration the flags describe, and the settings given explicitly."""
    given = {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in vars(args).items()
        if v is not None and k in _config_flag_names(task)
    }
    if given.get("preset"):
        name = given["preset"]
        if _presets.PRESETS.get(name, (task,))[0] != task:
            raise ValueError(f"preset {name!r} is for task {_presets.PRESETS[name][0]}")
        overrides = {k: v for k, v in given.items() if k != "preset"}
        config = _presets.preset_config(name, **overrides)
    else:
        config = _config.config_class(task)(**given)
    # $MAMLX_CONV_IMPL sets --conv-impl's default (not counted as given on --resume).
    env_impl = _env_defaults()["conv_impl"]
    if env_impl and "conv_impl" not in given and hasattr(config, "conv_impl"):
        if config.entry.network == "classifier":
            config = dataclasses.replace(config, conv_impl=env_impl)
    return config, given


def _config_flag_names(task: str) -> set[str]:
    """The names of a data set's configuration flags (its own and its learners')."""
    data = registry.get_dataset(task)
    names = {f.name for f in dataclasses.fields(data.config) if f.init and f.name != "learner"}
    for algo in registry.learner_names(data.family):
        names.update(registry.get_learner(algo).field_names())
    return names


def _json(obj: Any) -> str:
    """Strict JSON: a NaN (the CI of a single task) is written as ``null``."""

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(obj), indent=1, allow_nan=False)


def _load_run_config(run_dir: Path):
    from mamlx.runs import read_config

    return read_config(run_dir)


def _extend(config, steps: int, run_dir: Path):
    """A saved run's configuration trained on to ``steps``: allowed where the step count
    does not change what the earlier steps computed (a linear decay to 0 would)."""
    schedule = getattr(config, "meta_lr_schedule", "constant")
    if schedule in ("linear", "cosine") and steps != config.steps:
        raise ValueError(
            f"--resume {run_dir} --steps {steps}: this run decays its meta learning rate "
            f"{'linearly' if schedule == 'linear' else 'by a cosine'} until step "
            f"{config.steps}, so more steps would change what it computed"
        )
    if steps != config.steps:
        print(f"note: {run_dir}: steps {config.steps} -> {steps}")
    return dataclasses.replace(config, steps=steps)


def _fit(training, exp, config, state, run, run_dir: Path, last: dict, validate, mesh):
    """``mamlx.fit`` with the run's settings (``last`` receives each chunk's record)."""
    return training.fit(
        exp.learner,
        exp.sampler,
        exp.optimizer,
        steps=config.steps,
        meta_batch=config.meta_batch,
        state=state,
        data=exp.data,
        chunk=run.chunk,
        run_dir=run_dir,
        checkpoint_every=run.checkpoint_every,
        progress=run.progress,
        on_chunk=lambda s, rec: last.update(rec),
        validate=validate,
        validate_every=getattr(config, "val_every", 1000),
        mesh=mesh,
        max_seconds=60 * run.max_minutes if run.max_minutes > 0 else None,
    )


def cmd_train(args: argparse.Namespace) -> int:
    import jax

    from mamlx import train as training

    moved = False  # a resume given the run's data in another folder
    if args.task is None and not args.resume:
        raise ValueError("name a task (e.g. `mamlx train sinusoid`) or give --resume RUN_DIR")
    if args.task is None:  # `mamlx train --resume RUN_DIR [--steps N]`
        run_dir = Path(args.resume)
        config = _load_run_config(run_dir)
        if getattr(args, "steps", None) is not None:
            config = _extend(config, args.steps, run_dir)
    else:
        config, given = _config_from_args(args.task, args)
        if args.resume and args.out and Path(args.resume) != Path(args.out):
            raise ValueError("--resume RUN_DIR and --out disagree; give one of them")
        run_dir = Path(args.resume or args.out or f"runs/{args.task}-{config.algo}-{config.seed}")
        if not args.resume and isinstance(config, _config.FewShotConfig) and not config.data_dir:
            # Record the folder $MAMLX_DATA_DIR points to now, so eval and resume find it
            # without the variable (none set: the download cache, found again by itself).
            env = _env_defaults()["data_dir"]
            found = os.path.join(env, config.task) if env else None
            config = dataclasses.replace(config, data_dir=found) if found else config
        if not args.resume and isinstance(config, _config.FewShotConfig) and not config.cache_dir:
            config = dataclasses.replace(config, cache_dir=_env_defaults()["cache"])
        if args.resume:
            saved = _load_run_config(run_dir)
            if "steps" in given:
                saved = _extend(saved, given["steps"], run_dir)
            if "data_dir" in given and saved.data_dir != config.data_dir:
                # Where the data lives, not what the run computes: a moved folder is fine.
                print(f"note: data folder {saved.data_dir!r} -> {config.data_dir!r}")
                saved = dataclasses.replace(saved, data_dir=config.data_dir)
                moved = True
            diff = {
                k: (getattr(saved, k), v)
                for k, v in config.to_dict().items()
                if k in given and getattr(saved, k) != v
            }
            if diff:
                raise ValueError(
                    f"--resume {run_dir}: configuration differs from the saved run "
                    + ", ".join(f"{k}: saved {a!r} vs given {b!r}" for k, (a, b) in diff.items())
                )
            config = saved
    resume = bool(args.resume)
    run = _run_settings(args, run_dir, resume)
    if run.compile_cache:
        enable_compilation_cache()
    exists = (run_dir / "config.json").exists() or checkpoint.latest_checkpoint(run_dir)
    if exists and not resume:
        raise ValueError(
            f"run directory {run_dir} already holds a run; use --resume {run_dir} or another --out"
        )
    mesh = None
    if run.cpu_devices:  # before anything starts JAX's backend
        from mamlx.sharding import split_cpu

        split_cpu(run.cpu_devices)
    if run.distributed:
        from mamlx.sharding import initialize_distributed

        try:
            initialize_distributed(**_distributed_args(args))
        except ValueError as e:  # JAX could not tell where this process sits
            e.add_note(
                "mamlx: --distributed needs --coordinator-address, --num-processes and "
                "--process-id (or $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID) "
                "outside SLURM, Open MPI and TPU pods; --no-distributed trains in this process"
            )
            raise
    # After jax.distributed.initialize: asking for the backend (bfloat16's check) starts it.
    set_matmul_precision(run.matmul_precision)
    if run.cpu_devices and jax.default_backend() != "cpu":
        if run.cpu_devices_given:
            raise ValueError(
                f"--cpu-devices {run.cpu_devices} splits a CPU backend; this process computes on "
                f"{jax.default_backend()} (--devices shards over its devices; JAX_PLATFORMS=cpu "
                "computes on the CPU)"
            )
        print(  # a run begun on a CPU, resumed on an accelerator: its saved setting is moot
            f"note: {run_dir}/run.json has cpu_devices {run.cpu_devices}, for a CPU; this process "
            f"computes on {jax.default_backend()}: cpu_devices 0, devices {run.devices or 'all'}",
            file=sys.stderr,
        )
        run.cpu_devices = 0
    del run.cpu_devices_given  # not a run setting
    if run.devices != 1:
        from mamlx.sharding import check_divisible, task_mesh

        mesh = task_mesh(run.devices or None)
        try:
            check_divisible(config.meta_batch, mesh)
        except ValueError as e:
            if run.cpu_devices:
                e.add_note(
                    f"mamlx: --cpu-devices {run.cpu_devices} split the CPU; give a "
                    "--meta-batch it divides, or another --cpu-devices"
                )
            raise
        if mesh.devices.size > 1 and not getattr(config, "reset_inner_state", True):
            raise ValueError(
                f"reset_inner_state=False carries the inner optimizer's state through the "
                f"meta-batch's tasks in order, on one device; --devices {run.devices or 'all'} "
                f"splits them over {mesh.devices.size}: train on one (--devices 1) or with "
                f"--reset-inner-state"
            )
    exp = _experiments.build(config)
    state = training.init_state(exp.learner, exp.optimizer, jax.random.PRNGKey(config.seed))
    if resume:
        restored = training.restore(run_dir, state)
        if restored is not None:
            state = restored
        print(f"resuming {run_dir} at step {int(state.step)} of {config.steps}")
    if resume and not moved:  # `--steps N` extends a run: its config.json says so
        moved = _load_run_config(run_dir).steps != config.steps
    if (not resume or moved) and jax.process_index() == 0:  # one writer, also on many hosts
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.atomic_write_text(
            run_dir / "config.json", json.dumps(config.to_dict(), indent=2)
        )
    resolved = _experiments.resolved_settings(config)
    _note_resolved_changes(run_dir / "run.json", resolved)
    if jax.process_index() == 0:  # the settings in force, for the next resume
        record = {**vars(run), "resolved": resolved}
        checkpoint.atomic_write_text(run_dir / "run.json", json.dumps(record, indent=2))
    print(f"training {config.task} with {config.algo} -> {run_dir}")
    validate = None
    if (
        isinstance(config, _config.FewShotConfig) and "val" in exp.splits
    ):  # no val classes: no validation
        from mamlx.evaluation import make_evaluator

        val_eval = make_evaluator(  # the tasks mapped as in training
            exp.learner, exp.eval_sampler, steps=[config.eval_steps], task_map=config.task_map
        )
        val_key = jax.random.PRNGKey(config.seed + 7919)

        def validate(params):
            res = val_eval(params, exp.splits["val"], key=val_key, num_tasks=config.val_tasks)
            return {k: v[0] for k, v in res[config.eval_steps].items()}

    t0 = time.perf_counter()
    last: dict = {}
    try:
        state = _fit(training, exp, config, state, run, run_dir, last, validate, mesh)
    except training.TrainingInterrupted as e:
        saved = "checkpoint saved" if e.checkpoint_path else "no checkpoint written here"
        if jax.process_index() > 0:
            saved = "process 0 saves the checkpoint"
        again = " --distributed (in every process)" if jax.process_count() > 1 else ""
        print(
            f"interrupted at step {e.step}; {saved}; resume with: mamlx train --resume "
            f"{run_dir}{again}",
            file=sys.stderr,
        )
        return 130
    except Exception as e:
        runtime = type(e).__name__ in ("JaxRuntimeError", "XlaRuntimeError")
        if not (runtime and jax.process_count() > 1):
            raise
        # A collective failed: another process died or cannot be reached. JAX's exit handler
        # would wait for it, then abort; say what happened and leave now.
        latest = checkpoint.latest_checkpoint(run_dir)
        where = f"the last checkpoint is {latest}" if latest else f"no checkpoint in {run_dir}"
        print(
            f"mamlx: error: {str(e).splitlines()[0]}\n"
            f"mamlx: process {jax.process_index()} of {jax.process_count()}: another process of "
            f"this --distributed run stopped or cannot be reached (see its log); {where}; "
            f"resume with: mamlx train --resume {run_dir} --distributed (in every process)",
            file=sys.stderr,
            flush=True,
        )
        sys.stdout.flush()
        os._exit(2)
    wall = time.perf_counter() - t0
    summary = {k: v for k, v in last.items() if k not in ("seconds",)}
    summary.update(wall_seconds=round(wall, 1), run_dir=str(run_dir))
    print(
        "done: "
        + ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()
        )
    )
    print(f"next: mamlx eval {run_dir}")
    return 0


def _load_trained(run_dir: Path, best: bool = True, **changes):
    """Config, built experiment and trained state of a run (its best checkpoint if any).

    ``changes`` that are not ``None`` replace fields of a few-shot run's configuration
    that do not change what was trained: ``data_dir`` (data moved since), ``eval_rotate``,
    ``eval_shots``, ``eval_ways`` and ``eval_queries`` (the test protocol).
    """
    from mamlx.runs import load_state

    config = _load_run_config(run_dir)
    changes = {k: v for k, v in changes.items() if v is not None}
    if changes and isinstance(config, _config.FewShotConfig):
        config = dataclasses.replace(config, **changes)
    exp = _experiments.build(config)
    # Read only: the run may still be training (``restore`` would rewrite its metrics log).
    return config, exp, load_state(run_dir, config, exp.learner, exp.optimizer, best=best)[0]


def eval_fewshot(run_dir: Path, args: argparse.Namespace) -> dict:
    """Accuracy ± 95% CI on held-out test classes, as the papers report it."""
    import jax

    from mamlx.evaluation import evaluate, mean_ci

    if args.max_steps is not None:
        raise ValueError(
            f"{run_dir} is a few-shot run: --max-steps applies to sine-wave runs "
            f"(a few-shot run is tested after its eval_inner_steps)"
        )
    if args.shots is not None and len(args.shots) != 1:
        raise ValueError(f"{run_dir}: give a few-shot run one --shots value, got {args.shots}")
    config, exp, state = _load_trained(
        run_dir,
        data_dir=args.data_dir or None,
        eval_rotate=args.eval_rotate,
        eval_shots=args.shots[0] if args.shots else None,
        eval_ways=args.ways,
        eval_queries=args.queries,
    )
    tasks = args.tasks or config.eval_tasks
    steps = config.eval_steps
    per_task = evaluate(
        exp.learner,
        state.params,
        exp.eval_sampler,
        exp.splits["test"],
        key=jax.random.PRNGKey(args.seed),
        num_tasks=tasks,
        steps=[steps],
        per_task=True,
        progress=args.progress,
        task_map=config.task_map,  # as in training
    )[steps]
    res = {k: mean_ci(v) for k, v in per_task.items()}
    bn = "transductive" if getattr(config, "transductive", True) else "non-transductive"
    acc, ci = res["accuracy"]
    ways, shots = config.eval_ways or config.ways, config.eval_shots or config.shots
    rotated = ", test classes with rotations" if config.eval_rotate else ""
    how = f"{steps} inner steps, " if steps is not None else ""
    print(
        f"{run_dir}: {config.algo} {config.task} {ways}-way {shots}-shot, step {int(state.step)}"
        f": accuracy {100 * acc:.2f} ± {100 * ci:.2f}% over {tasks} test tasks "
        f"({how}{bn} batch norm{rotated})"
    )
    out = {
        "tasks": tasks,
        "seed": args.seed,
        "step": int(state.step),
        "inner_steps": steps,
        "ways": ways,
        "shots": shots,
        "queries": config.eval_queries or config.queries,
        "batch_norm": bn,
        "eval_rotate": config.eval_rotate,
        "accuracy": [acc, ci],
        "loss": list(res["loss"]),
        # Task i is the same for every run evaluated with this seed: paired comparisons.
        "per_task_accuracy": [round(float(a), 6) for a in per_task["accuracy"]],
    }
    checkpoint.atomic_write_text(run_dir / "eval.json", _json(out))
    return out


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def cmd_list(args: argparse.Namespace) -> int:
    """Print the learner, data-set and preset tables."""
    from mamlx.presets import MEASURED_TIME

    learners = [
        [n, ",".join(e.families), e.network, e.description, e.reference]
        for n in registry.learner_names()
        for e in [registry.get_learner(n)]
    ]
    data = [
        [n, e.family, e.description]
        for n in registry.dataset_names()
        for e in [registry.get_dataset(n)]
    ]
    presets = []
    for name, (task, values, source) in sorted(_presets.PRESETS.items()):
        t = MEASURED_TIME.get(name, {})
        timed = "; ".join(f"{k}: {v}" for k, v in t.items()) or "not timed"
        presets.append([name, task, values.get("algo", "maml"), source, timed])
    what = args.what or "all"
    if what in ("all", "learners"):
        print(_table(learners, ["learner", "data", "network", "what it is", "reference"]) + "\n")
    if what in ("all", "datasets"):
        print(_table(data, ["data set", "family", "what it is"]) + "\n")
    if what in ("all", "presets"):
        print(
            _table(
                presets, ["preset", "data set", "learner", "source (published)", "measured time"]
            )
        )
        print("\ncpu: 2 CPU cores (AMD EPYC); gpu: one device as named")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """Summarise a run: settings, progress, best validation, the checkpoint eval uses, and a
    PNG of its curves."""
    from mamlx.plots import plot_training_curves

    run_dir = Path(args.run_dir)
    config = _load_run_config(run_dir)
    defaults = _config.config_class(config.task)(algo=config.algo).to_dict()
    changed = {k: v for k, v in config.to_dict().items() if defaults.get(k) != v}
    settings = " ".join(f"{k}={v}" for k, v in changed.items() if k not in ("algo", "task"))
    print(f"{run_dir}: {config.task} --algo {config.algo} {settings}".rstrip())
    log = run_dir / "metrics.jsonl"
    records = [json.loads(r) for r in log.read_text().splitlines()] if log.is_file() else []
    step = records[-1]["step"] if records else 0
    print(f"step {step} of {config.steps}" + (" (finished)" if step >= config.steps else ""))
    vals = [r for r in records if "val_accuracy" in r]
    if vals:
        best = max(vals, key=lambda r: r["val_accuracy"])
        print(
            f"validation accuracy: best {100 * best['val_accuracy']:.2f}% at step {best['step']}"
            f", last {100 * vals[-1]['val_accuracy']:.2f}% at step {vals[-1]['step']}"
        )
    if (run_dir / "best.npz").is_file():
        print(f"mamlx eval uses {run_dir / 'best.npz'} (the best validation)")
    elif (latest := checkpoint.latest_checkpoint(run_dir)) is not None:
        print(f"mamlx eval uses {latest} (the latest; no validation recorded)")
    else:
        print("no checkpoint yet")
    if (run_dir / "eval.json").is_file():
        ev = json.loads((run_dir / "eval.json").read_text())
        if "accuracy" in ev:
            acc, ci = ev["accuracy"]
            print(
                f"last eval: accuracy {100 * acc:.2f} ± {100 * (ci or 0):.2f}% ({ev['tasks']} tasks)"
            )
    if records:
        fig = Path(args.figure) if args.figure else run_dir / "curves.png"
        plot_training_curves(records, fig, title=f"{config.task} {config.algo} {settings}"[:120])
        print(f"figure: {fig}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Adapt on a support folder, print ``path<TAB>class`` per query image (stdout) and a
    summary, with the accuracy where query files sit in class folders (stderr)."""
    from mamlx.runs import load_run, predict_folders

    enable_compilation_cache()
    _use_run_precision(Path(args.run_dir), args.matmul_precision)
    run = load_run(args.run_dir, best=not args.latest)
    pred = predict_folders(run, args.support, args.query, steps=args.steps)
    for path, name in zip(pred.paths, pred.predicted, strict=True):
        print(f"{path}\t{name}")
    steps = args.steps if args.steps is not None else run.config.eval_steps
    how = f", {steps} adaptation steps" if steps is not None else ""
    print(
        f"{len(pred.paths)} images, {len(pred.classes)} classes ({run.config.algo}, "
        f"{run.checkpoint}, step {run.step}{how})",
        file=sys.stderr,
    )
    if pred.accuracy is not None:
        scored = sum(t is not None for t in pred.truth)
        print(
            f"accuracy {100 * pred.accuracy:.2f}% on {scored} images in class folders",
            file=sys.stderr,
        )
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    """Write a metric learner's embeddings of image files (N, D) and print the files in
    row order."""
    import numpy as np

    from mamlx.runs import embed_folder, load_run

    out = Path(args.out)
    if out.suffix != ".npy":
        raise ValueError(f"--out {out}: give a .npy file name (the array is saved with numpy)")
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: the folder {out.parent} does not exist; create it first")
    enable_compilation_cache()
    _use_run_precision(Path(args.run_dir), args.matmul_precision)
    run = load_run(args.run_dir, best=not args.latest)
    paths, emb = embed_folder(run, args.images)
    checkpoint.atomic_write_bytes(out, lambda f: np.save(f, emb))
    for path in paths:
        print(path)
    print(
        f"wrote {emb.shape[0]}x{emb.shape[1]} embeddings to {out} (row i: line i)", file=sys.stderr
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import jax

    from mamlx.evaluation import evaluate
    from mamlx.plots import plot_sinusoid_fits
    from mamlx.tasks import sinusoid

    if (args.tasks is not None and args.tasks < 1) or (args.max_steps or 0) < 0:
        raise ValueError("--tasks must be >= 1 and --max-steps >= 0")
    if (args.shots is not None and min(args.shots) < 1) or any(
        n is not None and n < 1 for n in (args.queries, args.ways)
    ):
        raise ValueError("--shots, --queries and --ways must be >= 1")
    enable_compilation_cache()
    runs, curves = [], {}
    key = jax.random.PRNGKey(args.seed)
    sine = copy.copy(args)  # the sine-wave runs' defaults
    sine.shots = args.shots or [5, 10, 20]
    sine.max_steps = 10 if args.max_steps is None else args.max_steps
    sine.queries = 100 if args.queries is None else args.queries
    for rd in map(Path, args.run_dirs):
        _use_run_precision(rd, args.matmul_precision)
        if isinstance(_load_run_config(rd), _config.FewShotConfig):
            eval_fewshot(rd, args)
            continue
        if args.eval_rotate is not None or args.ways is not None:
            raise ValueError(
                f"{rd} is a sine-wave run: --eval-rotate and --ways apply to few-shot runs"
            )
        config, exp, state = _load_trained(rd)
        num_tasks = sine.tasks or 1000
        name = f"{config.algo} ({rd.name})"
        results: dict = {}
        print(
            f"\n{name}: query MSE ± 95% CI over {num_tasks} held-out tasks, step {int(state.step)}"
        )
        print(
            "  K  " + "".join(f"{f'{s} steps':>17}" for s in (0, 1, 5, 10) if s <= sine.max_steps)
        )
        for k in sine.shots:
            sampler = sinusoid(k, queries=sine.queries)
            res = evaluate(
                exp.learner,
                state.params,
                sampler,
                key=jax.random.fold_in(key, k),
                num_tasks=num_tasks,
                steps=range(sine.max_steps + 1),
                task_map=config.task_map,  # as in training
            )
            results[k] = {s: res[s]["loss"] for s in res}
            row = "".join(
                f"{results[k][s][0]:>10.3f} ±{results[k][s][1]:5.3f}"
                for s in (0, 1, 5, 10)
                if s <= sine.max_steps
            )
            print(f"{k:>3}  {row}")
        checkpoint.atomic_write_text(
            rd / "eval.json",
            _json(
                {
                    "tasks": num_tasks,
                    "seed": sine.seed,
                    "step": int(state.step),
                    "mse": {
                        str(k): {str(s): list(v) for s, v in r.items()} for k, r in results.items()
                    },
                }
            ),
        )
        runs.append((name, exp.learner, state.params))
        curves[name] = results[10] if 10 in results else results[sine.shots[0]]
    if not runs:
        return 0
    fig = Path(sine.figure) if sine.figure else Path(sine.run_dirs[0]) / "sinusoid_fits.png"
    k_fig = 10 if 10 in sine.shots else sine.shots[0]
    plot_sinusoid_fits(
        runs,
        sinusoid(k_fig),
        jax.random.fold_in(key, 999),
        fig,
        steps=tuple(s for s in (1, 10) if s <= sine.max_steps),
        curves=curves,
    )
    print(f"\nfigure: {fig}")
    return 0


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    parser = build_parser(tables="train" in words)
    parser.add_argument(
        "--no-tune-malloc",
        dest="tune_malloc",
        action="store_false",
        default=_env_defaults()["tune_malloc"],
        help="leave glibc's malloc settings alone (default: tune them for XLA's large "
        "temporaries, see mamlx.runtime; MAMLX_TUNE_MALLOC=0 also skips it)",
    )
    args = parser.parse_args(argv)
    if args.tune_malloc:  # before JAX computes anything (its CPU threads then share one heap)
        from mamlx.runtime import tune_host_allocator

        tune_host_allocator()
    try:
        commands = {
            "train": cmd_train,
            "eval": cmd_eval,
            "list": cmd_list,
            "show": cmd_show,
            "predict": cmd_predict,
            "embed": cmd_embed,
        }
        return commands[args.command](args)
    except BrokenPipeError:  # `mamlx predict ... | head`: the reader left; not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)  # the exit's flush must not fail again
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:  # outside fit (loading, compiling, evaluating): nothing to keep
        print(
            f"mamlx: interrupted during {args.command}; no checkpoint was written", file=sys.stderr
        )
        return 130
    except Exception as e:
        # OSError: files, downloads; JaxRuntimeError: e.g. out of device memory.
        runtime = type(e).__name__ in ("JaxRuntimeError", "XlaRuntimeError")
        if not (isinstance(e, (ValueError, OSError, FloatingPointError)) or runtime):
            raise
        text = str(e).splitlines()[0] if runtime else str(e)
        notes = "".join(f"\n{n}" for n in getattr(e, "__notes__", ()))
        print(f"mamlx: error: {text}{notes}", file=sys.stderr)
        from mamlx.evaluation import out_of_device_memory

        if out_of_device_memory(e):
            hint = (
                "try a smaller --meta-batch, fewer --inner-steps, or --task-map map (one task "
                "at a time)"
                if args.command == "train"
                else "evaluation already went down to one task at a time; a smaller model or "
                "fewer eval_inner_steps needs a run trained so"
            )
            print(f"mamlx: the device ran out of memory: {hint}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
