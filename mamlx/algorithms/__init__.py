"""Meta-learners, each a :class:`MetaLearner` of pure functions."""

from mamlx.algorithms.base import MetaLearner, gradient_meta_grad, map_tasks
from mamlx.algorithms.maml import fomaml, maml
from mamlx.algorithms.pretrain import pretrain

__all__ = ["MetaLearner", "fomaml", "gradient_meta_grad", "maml", "map_tasks", "pretrain"]
