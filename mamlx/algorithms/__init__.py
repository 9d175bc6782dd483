"""Meta-learners, each a :class:`MetaLearner` of pure functions."""

from mamlx.algorithms.anil import anil, head_by_path
from mamlx.algorithms.base import MetaLearner, gradient_meta_grad, map_tasks
from mamlx.algorithms.imaml import imaml
from mamlx.algorithms.maml import fomaml, maml
from mamlx.algorithms.metasgd import metasgd, scale_by_learned_lr
from mamlx.algorithms.pretrain import pretrain
from mamlx.algorithms.reptile import reptile

__all__ = [
    "MetaLearner",
    "anil",
    "fomaml",
    "gradient_meta_grad",
    "head_by_path",
    "imaml",
    "maml",
    "map_tasks",
    "metasgd",
    "pretrain",
    "reptile",
    "scale_by_learned_lr",
]
