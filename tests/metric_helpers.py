"""Tiny models and data shared by the metric-learner tests (8x8 images, fast to compile)."""

import jax
import jax.numpy as jnp

from mamlx.models import MLP, ConvEmbedding, model, tree_cast


def tiny_data(classes=10, examples=8, size=8, dtype=jnp.float32, seed=0):
    """Class-structured random images: a class template plus per-example noise."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    templates = jax.random.normal(k1, (classes, 1, size, size, 1))
    noise = 0.3 * jax.random.normal(k2, (classes, examples, size, size, 1))
    return (templates + noise).astype(dtype)


def tiny_conv(blocks=2, filters=4, flatten=True, pool_blocks=None):
    """A 2-block, 4-filter ConvEmbedding: 8x8 -> 2x2x4 (16-d when flat)."""
    return model(
        lambda r: ConvEmbedding(
            1, filters=filters, blocks=blocks, pool_blocks=pool_blocks, flatten=flatten, rngs=r
        )
    )


def tiny_mlp64(dim=4, size=8):
    """Float64 MLP embedding of flattened images (for finite-difference checks)."""
    apply_fn, init_fn = model(lambda r: MLP((size * size, 8, dim), rngs=r))

    def embed(params, x):
        return apply_fn(params, x.reshape(x.shape[0], -1))

    return embed, lambda k: tree_cast(init_fn(k), jnp.float64)


def logits_fn(learner):
    """Jitted ``(params, support_x, support_y, x) -> predict(adapt(...), x)``."""
    return jax.jit(lambda p, sx, sy, x: learner.predict(learner.adapt(p, sx, sy), x))
