"""Meta-learners, each a :class:`MetaLearner` of pure functions."""

from mamlx.algorithms.base import MetaLearner, gradient_meta_grad, map_tasks
from mamlx.algorithms.hallucination import hallucinate, hallucination
from mamlx.algorithms.maml import fomaml, maml
from mamlx.algorithms.matching import matching
from mamlx.algorithms.pretrain import pretrain
from mamlx.algorithms.protonet import protonet, prototypes
from mamlx.algorithms.relation import relation
from mamlx.algorithms.siamese import pair_sampler, roc_auc, siamese, siamese_net

__all__ = ["MetaLearner", "fomaml", "gradient_meta_grad", "maml", "map_tasks", "pretrain"]
__all__ += [
    "hallucinate",
    "hallucination",
    "matching",
    "pair_sampler",
    "protonet",
    "prototypes",
    "relation",
    "roc_auc",
    "siamese",
    "siamese_net",
]
