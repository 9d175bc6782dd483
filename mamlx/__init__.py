"""mamlx: a functional JAX library for meta-learning ("learning to learn").

An episode is a pytree, a meta-learner is a tuple of pure functions, and one
meta-training step is a single compiled function.

The public names below are imported on first use (PEP 562), so ``import mamlx`` (and
``mamlx --help``) does not load JAX until something needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> the module that defines it (a submodule of mamlx itself for modules).
_LAZY: dict[str, str] = {
    "anil": "mamlx.algorithms.anil",
    "MetaLearner": "mamlx.algorithms.base",
    "hallucination": "mamlx.algorithms.hallucination",
    "imaml": "mamlx.algorithms.imaml",
    "fomaml": "mamlx.algorithms.maml",
    "maml": "mamlx.algorithms.maml",
    "matching": "mamlx.algorithms.matching",
    "meta_lstm": "mamlx.algorithms.meta_lstm",
    "metasgd": "mamlx.algorithms.metasgd",
    "pretrain": "mamlx.algorithms.pretrain",
    "protonet": "mamlx.algorithms.protonet",
    "relation": "mamlx.algorithms.relation",
    "ReptileState": "mamlx.algorithms.reptile",
    "CarriedParams": "mamlx.algorithms.reptile",
    "carried_state_outer": "mamlx.algorithms.reptile",
    "reptile": "mamlx.algorithms.reptile",
    "reptile_optimizer": "mamlx.algorithms.reptile",
    "siamese": "mamlx.algorithms.siamese",
    "transfer": "mamlx.algorithms.transfer",
    "triplet": "mamlx.algorithms.triplet",
    "angular_margin": "mamlx.algorithms.angular",
    "verification": "mamlx.verification",
    "checkpoint": "mamlx.checkpoint",
    "FewShotConfig": "mamlx.config",
    "MiniImageNetConfig": "mamlx.config",
    "SinusoidConfig": "mamlx.config",
    "Episode": "mamlx.episodes",
    "check_episode": "mamlx.episodes",
    "num_query": "mamlx.episodes",
    "num_support": "mamlx.episodes",
    "num_tasks": "mamlx.episodes",
    "evaluate": "mamlx.evaluation",
    "make_evaluator": "mamlx.evaluation",
    "mean_ci": "mamlx.evaluation",
    "build": "mamlx.experiments",
    "adapt": "mamlx.inner",
    "ConvEmbedding": "mamlx.models",
    "MLP": "mamlx.models",
    "functional": "mamlx.models",
    "model": "mamlx.models",
    "init_lstm_optimizer": "mamlx.optimizers",
    "init_meta_lstm": "mamlx.optimizers",
    "lstm_optimizer": "mamlx.optimizers",
    "meta_lstm_optimizer": "mamlx.optimizers",
    "registry": "mamlx.registry",
    "load_run": "mamlx.runs",
    "runtime": "mamlx.runtime",
    "search": "mamlx.search",
    "FewShotSampler": "mamlx.tasks",
    "MiniImageNetSplit": "mamlx.tasks",
    "OmniglotChars": "mamlx.tasks",
    "OmniglotSplit": "mamlx.tasks",
    "Sampler": "mamlx.tasks",
    "Sinusoid": "mamlx.tasks",
    "fewshot_sampler": "mamlx.tasks",
    "load_miniimagenet": "mamlx.tasks",
    "load_omniglot": "mamlx.tasks",
    "omniglot_split": "mamlx.tasks",
    "sinusoid": "mamlx.tasks",
    "NonFiniteLossError": "mamlx.train",
    "TrainState": "mamlx.train",
    "fit": "mamlx.train",
    "init_state": "mamlx.train",
    "make_step": "mamlx.train",
    "restore": "mamlx.train",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        value = module if _LAZY[name] == f"mamlx.{name}" else getattr(module, name)
    else:
        try:  # a submodule not listed above (``mamlx.plots``)
            value = importlib.import_module(f"mamlx.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"mamlx.{name}":
                raise
            raise AttributeError(f"module 'mamlx' has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


if TYPE_CHECKING:  # what the names are, for type checkers and IDEs
    from mamlx import checkpoint, registry, runtime, search, verification
    from mamlx.algorithms.angular import angular_margin
    from mamlx.algorithms.anil import anil
    from mamlx.algorithms.base import MetaLearner
    from mamlx.algorithms.hallucination import hallucination
    from mamlx.algorithms.imaml import imaml
    from mamlx.algorithms.maml import fomaml, maml
    from mamlx.algorithms.matching import matching
    from mamlx.algorithms.meta_lstm import meta_lstm
    from mamlx.algorithms.metasgd import metasgd
    from mamlx.algorithms.pretrain import pretrain
    from mamlx.algorithms.protonet import protonet
    from mamlx.algorithms.relation import relation
    from mamlx.algorithms.reptile import (
        CarriedParams,
        ReptileState,
        carried_state_outer,
        reptile,
        reptile_optimizer,
    )
    from mamlx.algorithms.siamese import siamese
    from mamlx.algorithms.transfer import transfer
    from mamlx.algorithms.triplet import triplet
    from mamlx.config import FewShotConfig, MiniImageNetConfig, SinusoidConfig
    from mamlx.episodes import Episode, check_episode, num_query, num_support, num_tasks
    from mamlx.evaluation import evaluate, make_evaluator, mean_ci
    from mamlx.experiments import build
    from mamlx.inner import adapt
    from mamlx.models import MLP, ConvEmbedding, functional, model
    from mamlx.optimizers import (
        init_lstm_optimizer,
        init_meta_lstm,
        lstm_optimizer,
        meta_lstm_optimizer,
    )
    from mamlx.runs import load_run
    from mamlx.tasks import (
        FewShotSampler,
        MiniImageNetSplit,
        OmniglotChars,
        OmniglotSplit,
        Sampler,
        Sinusoid,
        fewshot_sampler,
        load_miniimagenet,
        load_omniglot,
        omniglot_split,
        sinusoid,
    )
    from mamlx.train import NonFiniteLossError, TrainState, fit, init_state, make_step, restore

__version__ = "0.1.0"

__all__ = [
    "runtime",
    "ConvEmbedding",
    "anil",
    "hallucination",
    "imaml",
    "matching",
    "meta_lstm",
    "metasgd",
    "protonet",
    "relation",
    "reptile",
    "reptile_optimizer",
    "ReptileState",
    "CarriedParams",
    "carried_state_outer",
    "Sampler",
    "siamese",
    "transfer",
    "triplet",
    "angular_margin",
    "verification",
    "FewShotSampler",
    "MiniImageNetSplit",
    "OmniglotChars",
    "OmniglotSplit",
    "fewshot_sampler",
    "load_miniimagenet",
    "load_omniglot",
    "omniglot_split",
    "MLP",
    "Episode",
    "MetaLearner",
    "NonFiniteLossError",
    "Sinusoid",
    "SinusoidConfig",
    "FewShotConfig",
    "MiniImageNetConfig",
    "registry",
    "TrainState",
    "__version__",
    "adapt",
    "build",
    "check_episode",
    "checkpoint",
    "evaluate",
    "make_evaluator",
    "fit",
    "fomaml",
    "functional",
    "init_lstm_optimizer",
    "init_meta_lstm",
    "init_state",
    "lstm_optimizer",
    "meta_lstm_optimizer",
    "maml",
    "make_step",
    "mean_ci",
    "model",
    "num_query",
    "num_support",
    "num_tasks",
    "pretrain",
    "restore",
    "load_run",
    "search",
    "sinusoid",
]
