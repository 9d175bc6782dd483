"""Models (Flax NNX modules) and the functional adapter."""

from mamlx.models.adapter import count_params, functional, model, tree_cast
from mamlx.models.embedding import ConvEmbedding
from mamlx.models.heads import FullContextEmbedding, RelationModule
from mamlx.models.mlp import MLP

__all__ = [
    "MLP",
    "ConvEmbedding",
    "FullContextEmbedding",
    "RelationModule",
    "count_params",
    "functional",
    "model",
    "tree_cast",
]
