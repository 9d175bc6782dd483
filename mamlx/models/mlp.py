"""Multi-layer perceptron, the sine-wave regressor of the MAML paper."""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from mamlx.types import Array


class MLP(nnx.Module):
    """Fully connected ReLU network, default 1-40-40-1 as in Finn et al. (2017), Sec. 5.1.

    Args:
      features: layer widths including input and output, e.g. ``(1, 40, 40, 1)``.
      rngs: Flax RNG streams for initialization.

    Example:
      >>> mlp = MLP((1, 40, 40, 1), rngs=nnx.Rngs(0))
      >>> mlp(jax.numpy.zeros((5, 1))).shape
      (5, 1)
    """

    def __init__(self, features: Sequence[int] = (1, 40, 40, 1), *, rngs: nnx.Rngs):
        if len(features) < 2 or any(int(f) <= 0 for f in features):
            raise ValueError(f"MLP features must be >= 2 positive widths, got {tuple(features)}")
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(features[:-1], features[1:], strict=True)]
        )

    def __call__(self, x: Array) -> Array:
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)
