"""Child runs: train a small classifier with a candidate program; reward = held-out accuracy.

Bello et al. (2017) score an update rule by the accuracy of a small network trained with
it for a few epochs; Ramachandran et al. (2017) score an activation the same way with
the activation in the network. Here the child network is a small MLP (:class:`ChildMLP`)
trained for a few hundred minibatch steps through the shared inner loop
(:func:`mamlx.inner.run`) on a :class:`ClassificationTask` (Omniglot characters:
:func:`classification_task`; Gaussian blobs for tests: :func:`synthetic_task`).

Every candidate of a batch starts from the same initial weights and sees the same
minibatches (common random numbers), and the whole batch trains under one ``jax.vmap``
(:func:`rule_rewards`, :func:`activation_rewards`). A run whose weights, loss or
held-out logits are not finite (division by zero, overflow, NaN) gets ``worst_reward``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mamlx import inner
from mamlx._checks import check_count
from mamlx.losses import cross_entropy
from mamlx.search.activations import activation
from mamlx.search.lstm_controller import abstract_model
from mamlx.search.update_rules import as_optax
from mamlx.types import Array, PRNGKey

__all__ = [
    "ChildConfig",
    "ChildMLP",
    "ChildResult",
    "ClassificationTask",
    "activation_rewards",
    "classification_task",
    "rule_rewards",
    "synthetic_task",
    "train_child",
]


class ClassificationTask(NamedTuple):
    """One classification problem with train / validation / test examples.

    Attributes:
      train_x, val_x, test_x: float32 ``(N, D)`` flattened inputs.
      train_y, val_y, test_y: int32 ``(N,)`` labels ``0..C-1``.
    """

    train_x: Array
    train_y: Array
    val_x: Array
    val_y: Array
    test_x: Array
    test_y: Array

    @property
    def num_classes(self) -> int:
        """Number of classes (from concrete labels)."""
        return int(np.max(np.asarray(self.train_y))) + 1


def classification_task(
    images: np.ndarray,
    *,
    num_classes: int = 40,
    seed: int = 0,
    train: int = 12,
    val: int = 4,
    size: int = 14,
) -> ClassificationTask:
    """Classify ``num_classes`` characters drawn from ``images``, each drawer an example.

    Args:
      images: ``(characters, drawers, H, W, 1)``, e.g. ``split.train`` of
        :func:`mamlx.tasks.omniglot_split` (Omniglot: 20 drawers of 28x28).
      num_classes: characters to classify, drawn with ``seed``.
      seed: seed of the characters and of which drawers go to which split.
      train, val: drawers per character for training and validation; the rest test.
      size: side after average pooling (``H`` must be a multiple of it).

    Returns:
      :class:`ClassificationTask` with labels ``0..num_classes-1``; pixels standardized
      with the mean and standard deviation of the training examples.

    Example:
      >>> imgs = np.random.default_rng(0).random((50, 20, 28, 28, 1), np.float32)
      >>> task = classification_task(imgs, num_classes=5)
      >>> task.train_x.shape, task.val_x.shape, task.test_x.shape
      ((60, 196), (20, 196), (20, 196))
    """
    images = np.asarray(images, np.float32)
    chars, drawers, h, w = images.shape[:4]
    num_classes = check_count("num_classes", num_classes, low=2)
    if num_classes > chars:
        raise ValueError(f"num_classes={num_classes} is more than the {chars} characters given")
    if train < 1 or val < 1 or train + val >= drawers:
        raise ValueError(f"need train, val >= 1 and train + val < {drawers}, got {train}, {val}")
    if h % size or w % size:
        raise ValueError(f"size={size} must divide the image side ({h}x{w})")
    rng = np.random.default_rng(seed)
    picked = images[np.sort(rng.choice(chars, num_classes, replace=False))]
    pooled = picked.reshape(num_classes, drawers, size, h // size, size, w // size, -1)
    x = pooled.mean(axis=(3, 5)).reshape(num_classes, drawers, -1)
    order = np.stack([rng.permutation(drawers) for _ in range(num_classes)])
    x = np.take_along_axis(x, order[..., None], axis=1)
    y = np.broadcast_to(np.arange(num_classes)[:, None], (num_classes, drawers))

    mean, std = x[:, :train].mean(), x[:, :train].std() + 1e-6
    x = (x - mean) / std  # standardized with the training pixels' mean and deviation

    def part(lo: int, hi: int) -> tuple[Array, Array]:
        return (
            jnp.asarray(x[:, lo:hi].reshape(-1, x.shape[-1]), jnp.float32),
            jnp.asarray(y[:, lo:hi].reshape(-1), jnp.int32),
        )

    return ClassificationTask(
        *part(0, train), *part(train, train + val), *part(train + val, drawers)
    )


def synthetic_task(
    key: PRNGKey,
    *,
    num_classes: int = 4,
    dim: int = 8,
    train: int = 16,
    val: int = 8,
    test: int = 8,
    noise: float = 1.0,
) -> ClassificationTask:
    """Gaussian blobs: class means ``μ_k ~ N(0, I)``, examples ``μ_y + noise·N(0, I)``.

    A tiny stand-in for :func:`classification_task` in tests and examples.

    Args:
      key: PRNG key.
      num_classes: classes.
      dim: input dimension.
      train, val, test: examples per class in each split.
      noise: within-class standard deviation.

    Returns:
      :class:`ClassificationTask`.

    Example:
      >>> synthetic_task(jax.random.key(0)).train_x.shape
      (64, 8)
    """
    k_mean, *keys = jax.random.split(key, 4)
    means = jax.random.normal(k_mean, (num_classes, dim))

    def part(k: PRNGKey, n: int) -> tuple[Array, Array]:
        y = jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), n)
        return means[y] + noise * jax.random.normal(k, (len(y), dim)), y

    return ClassificationTask(*part(keys[0], train), *part(keys[1], val), *part(keys[2], test))


class ChildMLP(nnx.Module):
    """Fully connected child network whose hidden activation is an argument.

    Args:
      features: widths including input and output, e.g. ``(196, 32, 40)``.
      rngs: Flax RNG streams for initialization.

    Example:
      >>> net = ChildMLP((8, 16, 3), rngs=nnx.Rngs(0))
      >>> net(jnp.ones((2, 8)), activation=jnp.tanh).shape
      (2, 3)
    """

    def __init__(self, features: Sequence[int], *, rngs: nnx.Rngs):
        if len(features) < 2:
            raise ValueError(f"ChildMLP needs >= 2 widths, got {tuple(features)}")
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(features[:-1], features[1:], strict=True)]
        )

    def __call__(self, x: Array, activation: Callable[[Array], Array] = jax.nn.relu) -> Array:
        for layer in self.layers[:-1]:
            x = activation(layer(x))
        return self.layers[-1](x)


@dataclasses.dataclass(frozen=True)
class ChildConfig:
    """How a child network is trained.

    Attributes:
      hidden: hidden widths of :class:`ChildMLP`.
      steps: minibatch steps.
      batch_size: examples per step (drawn with replacement).
    """

    hidden: tuple[int, ...] = (32,)
    steps: int = 300
    batch_size: int = 32


def _check_split(split: str) -> None:
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")


class ChildResult(NamedTuple):
    """Outcome of one child run.

    Attributes:
      val_accuracy, test_accuracy: accuracy on the validation and test examples (as
        computed, even if the run is invalid).
      loss: training loss before the last step.
      valid: whether the weights, losses and held-out logits stayed finite.
    """

    val_accuracy: Array
    test_accuracy: Array
    loss: Array
    valid: Array

    def accuracy(self, split: str) -> Array:
        """The accuracy on ``split`` (``"val"`` or ``"test"``)."""
        _check_split(split)
        return self.val_accuracy if split == "val" else self.test_accuracy


def train_child(
    task: ClassificationTask,
    optimizer: optax.GradientTransformation,
    key: PRNGKey,
    *,
    num_classes: int,
    config: ChildConfig = ChildConfig(),
    activation_fn: Callable[[Array], Array] = jax.nn.relu,
) -> ChildResult:
    """Train a :class:`ChildMLP` on ``task`` with ``optimizer``; score it on held-out examples.

    The child run of Bello et al. (2017), "Neural Optimizer Search with Reinforcement
    Learning", and Ramachandran et al. (2017), "Searching for Activation Functions":
    ``config.steps`` steps of ``θ ← θ + optimizer(∇ CE(θ; minibatch))`` from weights drawn
    with ``key``, then the accuracies on ``task``'s validation and test examples. Pure and
    jittable; ``vmap``
    over optimizers built from traced codes (:func:`~mamlx.search.as_optax`) or over
    traced activation codes.

    Args:
      task: the problem (arrays may be traced).
      optimizer: any optax transformation.
      key: PRNG key of the initial weights and the minibatches.
      num_classes: output width (static).
      config: network and schedule.
      activation_fn: the hidden activation.

    Returns:
      :class:`ChildResult`.

    Example:
      >>> task = synthetic_task(jax.random.key(0))
      >>> out = train_child(task, optax.sgd(0.1), jax.random.key(1), num_classes=4,
      ...                   config=ChildConfig(hidden=(16,), steps=5, batch_size=8))
      >>> bool(out.valid), 0.0 <= float(out.val_accuracy) <= 1.0
      (True, True)
    """
    steps = check_count("steps", config.steps, low=1)
    features = (task.train_x.shape[-1], *config.hidden, int(num_classes))
    apply_fn, init_fn = abstract_model(lambda rngs: ChildMLP(features, rngs=rngs))
    k_init, k_batch = jax.random.split(key)
    params = init_fn(k_init)
    idx = jax.random.randint(k_batch, (steps, config.batch_size), 0, task.train_x.shape[0])

    def loss_fn(p, x, y, i):
        return cross_entropy(apply_fn(p, x[i], activation=activation_fn), y[i])

    out = inner.run(
        loss_fn,
        params,
        task.train_x,
        task.train_y,
        steps=steps,
        optimizer=optimizer,
        step_inputs=idx,
    )
    finite = [jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(out.params)]
    valid = jnp.all(jnp.stack([*finite, jnp.all(jnp.isfinite(out.losses))]))
    accuracies = []
    for x, y in ((task.val_x, task.val_y), (task.test_x, task.test_y)):
        logits = apply_fn(out.params, x, activation=activation_fn)
        valid = valid & jnp.all(jnp.isfinite(logits))
        accuracies.append(jnp.mean(jnp.argmax(logits, -1) == y))
    return ChildResult(*accuracies, out.losses[-1], valid)


RewardFn = Callable[[Array, PRNGKey, ClassificationTask], Array]


def rule_rewards(
    num_classes: int,
    config: ChildConfig = ChildConfig(),
    *,
    learning_rates: Sequence[float] = (0.01, 0.1),
    worst_reward: float = 0.0,
    split: str = "val",
) -> RewardFn:
    """Reward of a batch of update-rule codes: held-out accuracy of a child trained with each.

    Bello et al. (2017), "Neural Optimizer Search with Reinforcement Learning", ICML. Each
    code trains a child at every ``λ`` in ``learning_rates`` (the rules' scales differ by
    orders of magnitude); its reward is the best accuracy over them, ``worst_reward``
    where no run stayed finite.

    Args:
      num_classes: classes of the tasks the function will be given (static).
      config: the child network and schedule.
      learning_rates: the ``λ`` grid.
      worst_reward: reward of invalid programs.
      split: held-out split scored (``"val"`` while searching).

    Returns:
      Pure, jittable ``rewards(codes (B, 10), key, task) -> (B,)``; every code and rate
      trains under one ``vmap``, from the same weights and minibatches.

    Example:
      >>> from mamlx.search import KNOWN_RULES
      >>> task = synthetic_task(jax.random.key(0))
      >>> fn = rule_rewards(4, ChildConfig(hidden=(8,), steps=10, batch_size=8))
      >>> codes = jnp.stack([KNOWN_RULES["sgd"], KNOWN_RULES["sign"]])
      >>> jax.eval_shape(fn, codes, jax.random.key(1), task).shape  # jax.jit(fn)(...) trains
      (2,)
    """
    _check_split(split)
    if len(learning_rates) == 0:
        raise ValueError("learning_rates must hold at least one rate λ")
    lrs = jnp.asarray(learning_rates, jnp.float32)

    def one(code: Array, lr: Array, key: PRNGKey, task: ClassificationTask) -> Array:
        res = train_child(task, as_optax(code, lr), key, num_classes=num_classes, config=config)
        return jnp.where(res.valid, res.accuracy(split), -jnp.inf)

    def rewards(codes: Array, key: PRNGKey, task: ClassificationTask) -> Array:
        per_lr = jax.vmap(jax.vmap(one, (None, 0, None, None)), (0, None, None, None))
        best = jnp.max(per_lr(jnp.asarray(codes), lrs, key, task), axis=-1)
        return jnp.where(jnp.isfinite(best), best, worst_reward)

    return rewards


def activation_rewards(
    num_classes: int,
    config: ChildConfig = ChildConfig(),
    *,
    optimizer: optax.GradientTransformation | None = None,
    worst_reward: float = 0.0,
    split: str = "val",
) -> RewardFn:
    """Reward of a batch of activation codes: held-out accuracy of a child using each.

    Ramachandran, Zoph & Le (2017), "Searching for Activation Functions". Every child
    has the candidate as its hidden activation and trains with ``optimizer``.

    Args:
      num_classes: classes of the tasks the function will be given (static).
      config: the child network and schedule.
      optimizer: the child's optimizer (default Adam, rate 3e-3).
      worst_reward: reward of invalid programs.
      split: held-out split scored.

    Returns:
      Pure, jittable ``rewards(codes (B, 6), key, task) -> (B,)`` (one ``vmap``).

    Example:
      >>> from mamlx.search import KNOWN_ACTIVATIONS
      >>> task = synthetic_task(jax.random.key(0))
      >>> fn = activation_rewards(4, ChildConfig(hidden=(8,), steps=10, batch_size=8))
      >>> codes = jnp.stack([KNOWN_ACTIVATIONS["relu"], KNOWN_ACTIVATIONS["swish"]])
      >>> jax.eval_shape(fn, codes, jax.random.key(1), task).shape  # jax.jit(fn)(...) trains
      (2,)
    """
    _check_split(split)
    opt = optax.adam(3e-3) if optimizer is None else optimizer

    def one(code: Array, key: PRNGKey, task: ClassificationTask) -> Array:
        res = train_child(
            task,
            opt,
            key,
            num_classes=num_classes,
            config=config,
            activation_fn=activation(code),
        )
        return jnp.where(res.valid, res.accuracy(split), worst_reward)

    def rewards(codes: Array, key: PRNGKey, task: ClassificationTask) -> Array:
        return jax.vmap(one, (0, None, None))(jnp.asarray(codes), key, task)

    return rewards
