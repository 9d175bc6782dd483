"""mamlx.algorithms."""
