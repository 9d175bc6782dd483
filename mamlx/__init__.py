"""mamlx: a functional JAX library for meta-learning ("learning to learn")."""

from mamlx.episodes import Episode, check_episode, num_query, num_support, num_tasks

__version__ = "0.1.0"

__all__ = [
    "Episode",
    "check_episode",
    "num_query",
    "num_support",
    "num_tasks",
    "__version__",
]
