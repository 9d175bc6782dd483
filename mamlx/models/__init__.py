"""Models (Flax NNX modules) and the functional adapter."""

from mamlx.models.adapter import count_params, functional, model, tree_cast
from mamlx.models.mlp import MLP

__all__ = ["MLP", "count_params", "functional", "model", "tree_cast"]
