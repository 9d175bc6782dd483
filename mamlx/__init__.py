"""mamlx: a functional JAX library for meta-learning ("learning to learn").

An episode is a pytree, a meta-learner is a tuple of pure functions, and one
meta-training step is a single compiled function.
"""

from mamlx import checkpoint, registry, runtime
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
from mamlx.algorithms.reptile import ReptileState, reptile, reptile_optimizer
from mamlx.algorithms.siamese import siamese
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
    "Sampler",
    "siamese",
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
    "sinusoid",
]
