"""On-device N-way K-shot episode sampler for class-structured image arrays.

The dataset is one array ``data`` of shape ``(classes, examples, H, W, C)``
(Omniglot: ``(1200, 20, 28, 28, 1)``; mini-ImageNet: ``(64, 600, 84, 84, 3)``)
that lives on the device and is passed to ``sample`` as an argument. Sampling is
pure JAX: jittable, vmappable, no Python or host round trip per task.

An N-way K-shot episode (Vinyals et al. 2016, "Matching Networks for One Shot
Learning"; Finn et al. 2017, "Model-Agnostic Meta-Learning"): draw N distinct
classes, then K + Q distinct examples of each; the first K go to the support
set, the other Q to the query set; class ``i`` of the task gets label
``perm[i]`` for a fresh random permutation ``perm`` of ``0..N-1``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mamlx._checks import check_count
from mamlx.episodes import Episode
from mamlx.tasks.base import vmap_sample
from mamlx.types import Array, PRNGKey

__all__ = ["FewShotSampler", "fewshot_sampler"]


class FewShotSampler(NamedTuple):
    """Pure functions that sample N-way K-shot episodes (a :class:`~mamlx.tasks.Sampler`).

    Attributes:
      ways, shots, queries, rotate: the settings the sampler was built with.
      sample: ``sample(key, data) -> Episode`` for one task.
      sample_batch: ``sample_batch(key, data, num_tasks) -> Episode`` with a leading
        task axis (``jax.vmap`` of ``sample`` over ``num_tasks`` split keys,
        :func:`~mamlx.tasks.base.vmap_sample`); ``num_tasks`` must be static under
        ``jax.jit``.
    """

    ways: int
    shots: int
    queries: int
    rotate: bool
    sample: Callable[[PRNGKey, Array], Episode]
    sample_batch: Callable[[PRNGKey, Array, int], Episode]


def _check(data: Array, ways: int, shots: int, queries: int, rotate: bool) -> None:
    if data.ndim != 5:
        raise ValueError(
            f"data must have shape (classes, examples, H, W, C), got shape {data.shape}"
        )
    classes, examples, h, w, _ = data.shape
    if classes == 0:
        raise ValueError("data holds no classes (empty split?)")
    available = classes * (4 if rotate else 1)
    if ways > available:
        raise ValueError(
            f"ways={ways} is more than the {available} classes available "
            f"({classes} classes{' x 4 rotations' if rotate else ''})"
        )
    if shots + queries > examples:
        raise ValueError(
            f"shots + queries = {shots} + {queries} = {shots + queries} is more than the "
            f"{examples} examples per class"
        )
    if rotate and h != w:
        raise ValueError(f"rotate=True needs square images, got H={h}, W={w}")


def check_image_dtype(data: Array) -> None:
    """Reject missing data and integer images other than uint8 (value range unknown)."""
    if data is None:
        raise ValueError(
            "image tasks are drawn from data, got None: pass the images, an array of shape "
            "(classes, examples, H, W, C) (e.g. fit(..., data=split.train))"
        )
    dtype = getattr(data, "dtype", None)
    dtype = jnp.dtype(dtype if dtype is not None else jnp.asarray(data).dtype)
    if jnp.issubdtype(dtype, jnp.integer) and dtype != jnp.uint8:
        raise ValueError(
            f"integer image data must be uint8 (0..255, scaled to [0, 1]), got dtype {dtype}; "
            "pass uint8 images or floats in [0, 1]"
        )


def images_as_float(x: Array) -> Array:
    """uint8 images scaled to float32 in [0, 1], bool to float32 0/1, floats as they are."""
    if x.dtype == jnp.uint8:
        return x.astype(jnp.float32) / jnp.float32(255)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.float32)
    return x


def rotate_images(x: Array, k: Array) -> Array:
    """Rotate images ``x`` (..., H, W, C) by ``k`` * 90 degrees (counter-clockwise)."""
    branches = [lambda a, i=i: jnp.rot90(a, i, axes=(-3, -2)) for i in range(4)]
    return jax.lax.switch(k, branches, x)


def fewshot_sampler(ways: int, shots: int, queries: int, *, rotate: bool = False) -> FewShotSampler:
    """Build an N-way K-shot episode sampler.

    ``sample(key, data)`` draws ``ways`` distinct classes (without replacement),
    ``shots + queries`` distinct examples per class (without replacement), and
    returns an :class:`~mamlx.episodes.Episode` with

    * ``support_x`` ``(ways * shots, H, W, C)``, ``query_x`` ``(ways * queries, H, W, C)``,
      grouped by class (class ``i`` of the task occupies rows ``i*shots:(i+1)*shots``);
    * ``support_y``, ``query_y`` int32 labels: class ``i`` has label ``perm[i]``,
      ``perm`` a fresh permutation of ``0..ways-1`` per task.

    uint8 inputs are scaled to float32 in [0, 1] (divided by 255); bool inputs
    become float32 0/1; float inputs keep their dtype (:func:`images_as_float`).
    Other integer dtypes raise ``ValueError`` (their value range is unknown: pass
    uint8 or floats in [0, 1]). With ``rotate=True`` the sampler sees ``4 * classes``
    classes: class index ``c + k * classes`` is class ``c`` rotated by ``k * 90``
    degrees counter-clockwise (``jnp.rot90``), the Omniglot augmentation of Santoro
    et al. (2016) and Vinyals et al. (2016).

    Args:
      ways: classes per task (N), at least 1.
      shots: support examples per class (K), at least 1.
      queries: query examples per class (Q), at least 0.
      rotate: treat the 90-degree rotations of every class as new classes.

    Returns:
      A :class:`FewShotSampler`. Shape problems (ways larger than the number of
      classes, shots + queries larger than the examples per class, an empty
      data array) and integer data other than uint8 raise ``ValueError`` when
      ``sample`` is called or traced.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> data = jnp.zeros((10, 20, 28, 28, 1))
      >>> sampler = fewshot_sampler(5, 1, 15)
      >>> ep = jax.jit(sampler.sample)(jax.random.key(0), data)
      >>> ep.support_x.shape, ep.query_y.shape
      ((5, 28, 28, 1), (75,))
      >>> batch = jax.jit(sampler.sample_batch, static_argnums=2)(jax.random.key(1), data, 32)
      >>> batch.support_x.shape
      (32, 5, 28, 28, 1)
    """
    ways, shots = check_count("ways", ways), check_count("shots", shots)
    queries, rotate = check_count("queries", queries, low=0), bool(rotate)
    per_class = shots + queries

    def sample(key: PRNGKey, data: Array) -> Episode:
        check_image_dtype(data)
        data = jnp.asarray(data)
        _check(data, ways, shots, queries, rotate)
        classes, examples = data.shape[:2]
        total = classes * (4 if rotate else 1)
        # One draw of uniform scores for everything (a single RNG kernel compiles
        # and runs faster than three): class scores, example scores, label scores.
        u = jax.random.uniform(key, (total + ways * examples + ways,))
        # Without replacement: indices of the largest i.i.d. scores are a uniformly
        # random subset in random order (much cheaper on CPU than
        # jax.random.choice(replace=False), which permutes all classes).
        _, picked = jax.lax.top_k(u[:total], ways)
        base, turns = picked % classes, picked // classes
        ex_scores = u[total : total + ways * examples].reshape(ways, examples)
        _, idx = jax.lax.top_k(ex_scores, per_class)
        labels = jnp.argsort(u[total + ways * examples :]).astype(jnp.int32)
        x = images_as_float(data[base[:, None], idx])  # (ways, K + Q, H, W, C)
        if rotate:
            x = jax.vmap(rotate_images)(x, turns)
        rest = x.shape[2:]
        return Episode(
            support_x=x[:, :shots].reshape((ways * shots, *rest)),
            support_y=jnp.repeat(labels, shots),
            query_x=x[:, shots:].reshape((ways * queries, *rest)),
            query_y=jnp.repeat(labels, queries),
        )

    def sample_batch(key: PRNGKey, data: Array, num_tasks: int) -> Episode:
        return vmap_sample(sample, key, data, num_tasks)

    return FewShotSampler(ways, shots, queries, rotate, sample, sample_batch)
