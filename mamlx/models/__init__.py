"""mamlx.models."""
