"""Meta-learners, each a :class:`MetaLearner` of pure functions."""

from mamlx.algorithms.anil import anil, head_by_path
from mamlx.algorithms.base import (
    MetaLearner,
    gradient_meta_grad,
    map_tasks,
    map_tasks_mean,
    resolve_task_map,
)
from mamlx.algorithms.hallucination import hallucinate, hallucination
from mamlx.algorithms.imaml import imaml
from mamlx.algorithms.maml import fomaml, maml
from mamlx.algorithms.matching import matching
from mamlx.algorithms.meta_lstm import meta_lstm, meta_lstm_gate_trace
from mamlx.algorithms.metasgd import metasgd, scale_by_learned_lr
from mamlx.algorithms.pretrain import pretrain
from mamlx.algorithms.protonet import protonet, prototypes
from mamlx.algorithms.relation import relation
from mamlx.algorithms.reptile import reptile
from mamlx.algorithms.siamese import pair_sampler, roc_auc, siamese, siamese_net

__all__ = [
    "MetaLearner",
    "anil",
    "fomaml",
    "gradient_meta_grad",
    "hallucinate",
    "hallucination",
    "head_by_path",
    "imaml",
    "maml",
    "map_tasks",
    "map_tasks_mean",
    "matching",
    "meta_lstm",
    "meta_lstm_gate_trace",
    "metasgd",
    "pair_sampler",
    "pretrain",
    "protonet",
    "prototypes",
    "relation",
    "reptile",
    "resolve_task_map",
    "roc_auc",
    "scale_by_learned_lr",
    "siamese",
    "siamese_net",
]
