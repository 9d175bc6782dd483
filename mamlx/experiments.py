"""Experiment configurations: frozen dataclasses that build a runnable setup.

A configuration is everything needed to rebuild a run (it is saved as
``config.json`` in the run directory); ``build(config)`` turns it into the
learner, the task sampler, the dataset and the outer optimizer.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import optax

from mamlx.algorithms import MetaLearner, fomaml, maml, pretrain
from mamlx.models import MLP, model
from mamlx.tasks import sinusoid

SINUSOID_ALGOS = {"maml": maml, "fomaml": fomaml, "pretrain": pretrain}


class Experiment(NamedTuple):
    """A built configuration, ready for :func:`mamlx.train.fit`."""

    learner: MetaLearner
    sampler: Any
    data: Any
    optimizer: optax.GradientTransformation


def _positive_int(name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError(f"{name} must be a positive int, got {v!r}")


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
        _positive_int("shots (K)", self.shots)
        _positive_int("meta_batch", self.meta_batch)
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps must be a non-negative int, got {self.steps!r}")
        if isinstance(self.inner_steps, bool) or not isinstance(self.inner_steps, int):
            raise ValueError(f"inner_steps must be an int, got {self.inner_steps!r}")
        if self.inner_steps < 0:
            raise ValueError(f"inner_steps must be >= 0, got {self.inner_steps}")
        for name in ("inner_lr", "meta_lr"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive finite number, got {v!r}")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CONFIGS = {"sinusoid": SinusoidConfig}


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


def build(config: Any) -> Experiment:
    """Build learner, sampler, data and outer optimizer for a configuration."""
    if isinstance(config, SinusoidConfig):
        apply_fn, init_fn = sinusoid_model(config.hidden)
        kwargs = dict(inner_lr=config.inner_lr, inner_steps=config.inner_steps)
        learner = SINUSOID_ALGOS[config.algo](apply_fn, init_fn, task_map=config.task_map, **kwargs)
        return Experiment(learner, sinusoid(config.shots), None, optax.adam(config.meta_lr))
    raise ValueError(f"cannot build configuration of type {type(config).__name__}")
