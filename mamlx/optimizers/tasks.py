"""Optimizee task families for meta-training learned optimizers.

A family is a :class:`TaskFamily` of three pure functions: ``sample(key) -> task``,
``init(key, task) -> params`` and ``loss(params, task) -> scalar``. Tasks are pytrees,
so a batch of tasks is ``jax.vmap(family.sample)(keys)``.

Families follow Andrychowicz et al. (2016), "Learning to learn by gradient descent by
gradient descent": random 10-d quadratics ``‖Wθ − y‖²`` and a small MLP classifier
(here on synthetic data of any input shape, so real images such as Omniglot
characters can be fed later), plus Finn et al.'s (2017) sine-wave regression.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mamlx.losses import cross_entropy
from mamlx.types import Array, Params, PRNGKey


class TaskFamily(NamedTuple):
    """Pure functions defining a distribution over optimisation problems.

    Attributes:
      sample: ``key -> task`` (a pytree of arrays).
      init: ``(key, task) -> params``, the optimizee's initial parameters.
      loss: ``(params, task) -> scalar`` loss to minimise.
    """

    sample: Callable[[PRNGKey], Any]
    init: Callable[[PRNGKey, Any], Params]
    loss: Callable[[Params, Any], Array]


class QuadraticTask(NamedTuple):
    w: Array  # (dim, dim)
    y: Array  # (dim,)


class DataTask(NamedTuple):
    x: Array  # (N, *input_shape)
    y: Array  # (N,) int labels or (N, out) regression targets


def quadratic_family(dim: int = 10) -> TaskFamily:
    """Random quadratics ``f(θ) = ‖Wθ − y‖²`` with ``W, y, θ_0`` i.i.d. standard normal.

    Andrychowicz et al. (2016), Section 3.1 (10-dimensional).

    Args:
      dim: dimension of ``θ``.

    Returns:
      A :class:`TaskFamily` whose params are ``{"theta": (dim,)}``.

    Example:
      >>> fam = quadratic_family()
      >>> task = fam.sample(jax.random.key(0))
      >>> fam.loss(fam.init(jax.random.key(1), task), task).shape
      ()
    """

    def sample(key):
        kw, ky = jax.random.split(key)
        return QuadraticTask(jax.random.normal(kw, (dim, dim)), jax.random.normal(ky, (dim,)))

    def init(key, task):
        return {"theta": jax.random.normal(key, (dim,), task.y.dtype)}

    def loss(params, task):
        return jnp.sum((task.w @ params["theta"] - task.y) ** 2)

    return TaskFamily(sample, init, loss)


def mlp_init(key: PRNGKey, sizes: Sequence[int], dtype: Any = jnp.float32) -> list[dict]:
    """Plain-jax MLP parameters ``[{"w": (m, n), "b": (n,)}, ...]``, Glorot-normal weights."""
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {
            "w": jax.random.normal(k, (m, n), dtype) * math.sqrt(2.0 / (m + n)),
            "b": jnp.zeros((n,), dtype),
        }
        for k, m, n in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def mlp_apply(params: list[dict], x: Array, activation: Callable = jax.nn.sigmoid) -> Array:
    """Apply an MLP to ``x`` of shape ``(N, *input_shape)`` (flattened per example)."""
    h = jnp.reshape(x, (x.shape[0], -1))
    for layer in params[:-1]:
        h = activation(h @ layer["w"] + layer["b"])
    return h @ params[-1]["w"] + params[-1]["b"]


def mlp_classifier_family(
    input_shape: Sequence[int] = (16,),
    num_classes: int = 5,
    hidden: Sequence[int] = (20,),
    num_examples: int = 64,
    activation: Callable = jax.nn.sigmoid,
    noise: float = 1.0,
) -> TaskFamily:
    """Small MLP classifier (paper: one 20-unit sigmoid layer) on synthetic Gaussian blobs.

    ``sample`` draws ``num_classes`` class means ``μ_k ~ N(0, I)`` and examples
    ``x = μ_y + noise · ε``. ``init`` and ``loss`` accept any :class:`DataTask` whose
    ``x`` has shape ``(N, *input_shape)`` and integer labels ``y`` — e.g. real images.
    Loss: mean softmax cross-entropy over the full batch (:func:`mamlx.losses.cross_entropy`:
    labels outside ``0..num_classes-1`` are refused when they are concrete).

    Args:
      input_shape: shape of one input; flattened by the MLP.
      num_classes: number of classes.
      hidden: hidden-layer widths (``(20,)`` in the paper; wider to test generalisation).
      num_examples: examples per synthetic task.
      activation: hidden nonlinearity (sigmoid in the paper).
      noise: within-class standard deviation.

    Returns:
      A :class:`TaskFamily` with params a list of ``{"w", "b"}`` layers.

    Example:
      >>> fam = mlp_classifier_family()
      >>> task = fam.sample(jax.random.key(0))
      >>> fam.loss(fam.init(jax.random.key(1), task), task).shape
      ()
    """

    def sample(key):
        km, ky, kx = jax.random.split(key, 3)
        means = jax.random.normal(km, (num_classes, *input_shape))
        y = jax.random.randint(ky, (num_examples,), 0, num_classes)
        x = means[y] + noise * jax.random.normal(kx, (num_examples, *input_shape))
        return DataTask(x, y)

    def init(key, task):
        n_in = math.prod(task.x.shape[1:])
        return mlp_init(key, [n_in, *hidden, num_classes], task.x.dtype)

    def loss(params, task):
        return cross_entropy(mlp_apply(params, task.x, activation), task.y)

    return TaskFamily(sample, init, loss)


def sine_family(num_points: int = 50, hidden: Sequence[int] = (40, 40)) -> TaskFamily:
    """Sine-wave regression ``y = a·sin(x + b)``, ``a~U[0.1,5]``, ``b~U[0,π]``, ``x~U[−5,5]``.

    Finn et al. (2017), Section 5.1; the optimizee is a ReLU MLP ``1-40-40-1`` trained
    with mean squared error on ``num_points`` points.

    Args:
      num_points: points per task.
      hidden: hidden-layer widths.

    Returns:
      A :class:`TaskFamily` with params a list of ``{"w", "b"}`` layers.

    Example:
      >>> fam = sine_family()
      >>> task = fam.sample(jax.random.key(0))
      >>> fam.loss(fam.init(jax.random.key(1), task), task).shape
      ()
    """

    def sample(key):
        ka, kb, kx = jax.random.split(key, 3)
        a = jax.random.uniform(ka, (), minval=0.1, maxval=5.0)
        b = jax.random.uniform(kb, (), minval=0.0, maxval=math.pi)
        x = jax.random.uniform(kx, (num_points, 1), minval=-5.0, maxval=5.0)
        return DataTask(x, a * jnp.sin(x + b))

    def init(key, task):
        return mlp_init(key, [1, *hidden, 1], task.x.dtype)

    def loss(params, task):
        return jnp.mean((mlp_apply(params, task.x, jax.nn.relu) - task.y) ** 2)

    return TaskFamily(sample, init, loss)
