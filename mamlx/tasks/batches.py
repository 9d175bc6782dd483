"""Labelled image batches over all training classes: the sampler of the transfer baselines.

Learners that train one classifier over every training class (the transfer baseline of
Chen et al. 2019, the angular-margin softmax losses of face verification) draw plain
supervised batches, not episodes: ``batch`` images uniformly over classes and
examples, each labelled with its global class index. With ``rotate=True`` the
90-degree rotations of a class are classes of their own, as in the episode sampler
(:func:`mamlx.tasks.fewshot_sampler`): class ``c + k * classes`` is class ``c``
rotated by ``k * 90`` degrees.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mamlx._checks import check_count
from mamlx.tasks.base import vmap_sample
from mamlx.tasks.fewshot import check_image_dtype, images_as_float, rotate_images
from mamlx.types import Array, PRNGKey

__all__ = ["BatchSampler", "LabeledBatch", "class_batch_sampler", "num_classes"]


class LabeledBatch(NamedTuple):
    """Images with their global class labels.

    Attributes:
      x: ``(B, H, W, C)`` float images.
      y: ``(B,)`` int32 class indices in ``[0, classes)`` (counting rotations).
    """

    x: Array
    y: Array


class BatchSampler(NamedTuple):
    """A :class:`~mamlx.tasks.Sampler` of :class:`LabeledBatch` (see :func:`class_batch_sampler`)."""

    batch: int
    rotate: bool
    classes: int | None
    sample: Callable[[PRNGKey, Array], LabeledBatch]
    sample_batch: Callable[[PRNGKey, Array, int], LabeledBatch]


def num_classes(data_shape: tuple[int, ...], rotate: bool) -> int:
    """Classes a ``(classes, examples, H, W, C)`` array holds, counting rotations."""
    return int(data_shape[0]) * (4 if rotate else 1)


def class_batch_sampler(
    batch: int, *, rotate: bool = False, classes: int | None = None
) -> BatchSampler:
    """Sampler of ``batch`` labelled images from a ``(classes, examples, H, W, C)`` array.

    Classes and examples are drawn uniformly and independently (with replacement), so
    every class is equally likely whatever its example count. Pure JAX: jittable and
    vmappable; ``sample_batch(key, data, n)`` stacks ``n`` batches (:func:`mamlx.fit`'s
    meta-batch: ``n`` batches of ``batch`` images per step).

    Args:
      batch: images per sample, at least 1.
      rotate: 90-degree rotations as new classes (needs square images).
      classes: if given, the number of classes the learner's head has; drawing from
        data with another number of classes (counting rotations) raises a
        ``ValueError`` naming both, so labels never index past the head.

    Example:
      >>> s = class_batch_sampler(6, rotate=True, classes=40)
      >>> b = s.sample(jax.random.key(0), jnp.zeros((10, 20, 8, 8, 1)))
      >>> b.x.shape, b.y.dtype, bool((b.y < 40).all())
      ((6, 8, 8, 1), dtype('int32'), True)
    """
    batch, rotate = check_count("batch", batch), bool(rotate)
    if classes is not None:
        classes = check_count("classes", classes)

    def sample(key: PRNGKey, data: Array) -> LabeledBatch:
        check_image_dtype(data)
        data = jnp.asarray(data)
        if data.ndim != 5:
            raise ValueError(f"data must be (classes, examples, H, W, C), got shape {data.shape}")
        if rotate and data.shape[2] != data.shape[3]:
            raise ValueError(f"rotate=True needs square images, got shape {data.shape}")
        total = num_classes(data.shape, rotate)
        if classes is not None and total != classes:
            raise ValueError(
                f"the training split has {total} classes"
                f"{' (with rotations)' if rotate else ''} but the learner's head has "
                f"classes={classes} outputs"
            )
        k1, k2 = jax.random.split(key)
        y = jax.random.randint(k1, (batch,), 0, total, dtype=jnp.int32)
        ex = jax.random.randint(k2, (batch,), 0, data.shape[1])
        x = images_as_float(data[y % data.shape[0], ex])
        if rotate:
            x = jax.vmap(rotate_images)(x, y // data.shape[0])
        return LabeledBatch(x, y)

    def sample_batch(key: PRNGKey, data: Array, num_tasks: int) -> LabeledBatch:
        return vmap_sample(sample, key, data, num_tasks)

    return BatchSampler(batch, rotate, classes, sample, sample_batch)
