"""mamlx: a functional JAX library for meta-learning ("learning to learn").

An episode is a pytree, a meta-learner is a tuple of pure functions, and one
meta-training step is a single compiled function.
"""

# First: tunes the host allocator before JAX starts its CPU threads (see mamlx.runtime).
from mamlx import runtime

# isort: split
from mamlx import checkpoint
from mamlx.algorithms import (
    MetaLearner,
    anil,
    fomaml,
    hallucination,
    imaml,
    maml,
    matching,
    meta_lstm,
    metasgd,
    pretrain,
    protonet,
    relation,
    reptile,
    siamese,
)
from mamlx.episodes import Episode, check_episode, num_query, num_support, num_tasks
from mamlx.evaluation import evaluate, make_evaluator, mean_ci
from mamlx.experiments import SinusoidConfig, build
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
