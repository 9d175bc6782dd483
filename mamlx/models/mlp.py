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


class FCNet(nnx.Module):
    """MAML's fully connected classifier, "MAML, no conv" (Finn et al. 2017, Table 1).

    The images are flattened (28x28 = 784 inputs on Omniglot) and go through hidden
    layers of 256, 128, 64 and 64 units, each a linear map, batch norm and ReLU, then a
    linear head with ``ways`` logits (the reference code's ``construct_fc_weights`` /
    ``forward_fc``). Batch norm normalises with the statistics of the batch it is given,
    as in the Conv-4 (:func:`mamlx.models.conv4.batch_norm`), so the network adapts and
    predicts the same way.

    Args:
      ways: output logits.
      in_features: flattened input size (784 on Omniglot).
      hidden: hidden widths.
      rngs: Flax RNG streams for initialization.

    Example:
      >>> net = FCNet(5, in_features=784, rngs=nnx.Rngs(0))
      >>> net(jax.numpy.zeros((3, 28, 28, 1))).shape
      (3, 5)
    """

    def __init__(
        self,
        ways: int,
        *,
        in_features: int,
        hidden: Sequence[int] = (256, 128, 64, 64),
        rngs: nnx.Rngs,
    ):
        widths = (int(in_features), *(int(h) for h in hidden))
        if any(w <= 0 for w in widths) or int(ways) <= 0:
            raise ValueError(f"FCNet widths must be positive, got {widths} and ways={ways}")
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:], strict=True)]
        )
        self.norms = nnx.List(
            [
                nnx.BatchNorm(w, use_running_average=False, momentum=0.9, rngs=rngs)
                for w in widths[1:]
            ]
        )
        self.head = nnx.Linear(widths[-1], int(ways), rngs=rngs)

    def __call__(self, x: Array) -> Array:
        from mamlx.models.conv4 import batch_norm  # the Conv-4's batch norm (batch statistics)

        x = x.reshape(x.shape[0], -1)
        for layer, norm in zip(self.layers, self.norms, strict=True):
            x = jax.nn.relu(batch_norm(norm, layer(x), False))
        return self.head(x)
