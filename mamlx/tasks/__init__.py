"""mamlx.tasks."""
