"""mamlx.optimizers."""
