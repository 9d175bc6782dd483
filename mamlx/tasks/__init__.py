"""Task distributions: loaders and pure episode samplers."""

from mamlx.tasks.sinusoid import Sinusoid, sinusoid

__all__ = ["Sinusoid", "sinusoid"]
