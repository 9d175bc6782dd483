"""Meta-learners, each a :class:`MetaLearner` of pure functions.

One module per learner (``mamlx.algorithms.maml``, ``mamlx.algorithms.protonet``,
...); its factory is public at the top level (:func:`mamlx.maml`,
:func:`mamlx.protonet`, ...). This package binds no name of a submodule to anything
but that submodule, so ``import mamlx.algorithms.maml as m`` gives the module.
Pieces shared by several learners live in :mod:`mamlx.algorithms.base` (the
contract and the mapping over tasks), :mod:`mamlx.algorithms.gradient_based` and
:mod:`mamlx.algorithms.metric_based`.
"""

from mamlx.algorithms.anil import head_by_path
from mamlx.algorithms.base import (
    MetaLearner,
    gradient_meta_grad,
    learner_key,
    map_tasks,
    map_tasks_mean,
    resolve_task_map,
)
from mamlx.algorithms.hallucination import hallucinate
from mamlx.algorithms.meta_lstm import meta_lstm_gate_trace
from mamlx.algorithms.metasgd import scale_by_learned_lr
from mamlx.algorithms.metric_based import prototypes
from mamlx.algorithms.siamese import pair_sampler, roc_auc, siamese_net

__all__ = [
    "MetaLearner",
    "gradient_meta_grad",
    "hallucinate",
    "head_by_path",
    "learner_key",
    "map_tasks",
    "map_tasks_mean",
    "meta_lstm_gate_trace",
    "pair_sampler",
    "prototypes",
    "resolve_task_map",
    "roc_auc",
    "scale_by_learned_lr",
    "siamese_net",
]
