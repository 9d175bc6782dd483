"""Transfer baselines: one classifier over all training classes, adapted at test time.

The baselines that the meta-learning tables compare against, and that Chen et al. (2019,
"A Closer Look at Few-shot Classification") found strong when trained well:

* **Training** (no episodes): the embedding network f_φ and a head over *all* training
  classes (counting the 90-degree rotations as classes where the split does) minimise
  the ordinary cross-entropy of :class:`~mamlx.tasks.batches.LabeledBatch` batches
  (:func:`~mamlx.tasks.batches.class_batch_sampler`). The head is ``"linear"``
  (``W f + b``, Chen et al.'s Baseline) or ``"cosine"`` (``s · cos(f, w_c)``,
  Baseline++).
* **Test time**, on each episode's support set:

  - ``test_rule="finetune"``: a fresh N-way head of the same kind is trained for
    ``steps`` steps of full-batch gradient descent at ``inner_lr`` on the support
    embeddings (the fine-tuning baseline of Ravi & Larochelle 2017 and Chen et al.);
    with ``finetune_body=True`` the embedding is fine-tuned too. The linear head starts
    at zero (0 steps: uniform predictions); the cosine head starts at the support class
    means (weight imprinting, Qi et al. 2018), so 0 steps is the cosine nearest-class-mean
    rule.
  - ``test_rule="nn"``: nearest neighbour in the embedding: the score of class ``c`` is
    ``−min_{y_i = c} ‖f(x) − f(x_i)‖²`` (Ravi & Larochelle's nearest-neighbour baseline);
    ``steps`` does not apply.

The N-way head has one column per support example (as the prototypes of
:mod:`~mamlx.algorithms.protonet`), the columns of classes absent from the support set at
``-inf``, so any number of ways works under ``jit``. Batch norm uses the statistics of
each call (the support set, then the queries), as in every mamlx embedding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mamlx import inner
from mamlx.algorithms.base import MetaLearner, check_task_map, gradient_learner
from mamlx.algorithms.metric_based import (
    class_counts,
    class_one_hot,
    mask_absent,
    prototypes,
    squared_distances,
)
from mamlx.losses import cross_entropy, task_metrics
from mamlx.models.adapter import ApplyFn
from mamlx.tasks.batches import LabeledBatch
from mamlx.types import Array, Params, PRNGKey

__all__ = ["HEADS", "TEST_RULES", "NNState", "TransferState", "cosine_logits", "transfer"]

HEADS = ("linear", "cosine")
TEST_RULES = ("finetune", "nn")
_EPS = 1e-8


def cosine_logits(features: Array, weights: Array, scale: float) -> Array:
    """``scale · cos(f_i, w_c)``: the Baseline++ head (Chen et al. 2019, Sec. 3.2).

    Args:
      features: ``(B, D)``.
      weights: ``(D, C)`` class weight vectors (columns).
      scale: the temperature ``s``.

    Returns:
      ``(B, C)`` logits, unchanged when ``features`` or a column of ``weights`` is scaled
      by a positive number.

    Example:
      >>> cosine_logits(jnp.array([[3.0, 0.0]]), jnp.array([[1.0, 0.0], [0.0, 2.0]]), 2.0)
      Array([[2., 0.]], dtype=float32)
    """
    f = features / (jnp.linalg.norm(features, axis=-1, keepdims=True) + _EPS)
    w = weights / (jnp.linalg.norm(weights, axis=0, keepdims=True) + _EPS)
    return scale * f @ w


class TransferState(NamedTuple):
    """Task state of the fine-tuning rule.

    Attributes:
      body: embedding parameters (fine-tuned when ``finetune_body``).
      head: the N-way head, ``{"w": (D, S)}`` plus ``"b": (S,)`` for the linear head.
      counts: ``(S,)`` support examples per class (0: absent, masked to ``-inf``).
    """

    body: Params
    head: Params
    counts: Array


class NNState(NamedTuple):
    """Task state of the nearest-neighbour rule: the support embeddings and labels."""

    body: Params
    support: Array
    onehot: Array


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def nearest_neighbour_logits(queries: Array, support: Array, onehot: Array) -> Array:
    """``−min_{y_i = c} ‖q − s_i‖²`` for every class ``c`` (``-inf`` for absent classes).

    Args:
      queries: ``(Q, D)`` embeddings.
      support: ``(S, D)`` embeddings.
      onehot: ``(S, C)`` one-hot support labels.

    Example:
      >>> s = jnp.array([[0.0], [1.0], [5.0]])
      >>> nearest_neighbour_logits(jnp.array([[4.0]]), s, jnp.eye(2)[jnp.array([0, 0, 1])])
      Array([[-9., -1.]], dtype=float32)
    """
    d = squared_distances(queries, support)  # (Q, S)
    d = jnp.where(onehot[None, :, :] > 0, d[:, :, None], jnp.inf)  # (Q, S, C)
    return -jnp.min(d, axis=1)


def transfer(
    embed_fn: ApplyFn,
    init_fn: Callable[[PRNGKey], Params],
    *,
    classes: int,
    feature_dim: int,
    head: str = "linear",
    test_rule: str = "finetune",
    inner_lr: float = 0.1,
    inner_steps: int = 100,
    finetune_body: bool = False,
    scale: float = 10.0,
    task_map: str = "vmap",
) -> MetaLearner:
    """The transfer baseline (see the module docstring).

    Args:
      embed_fn: ``embed_fn(params, x) -> (B, feature_dim)`` embeddings.
      init_fn: ``init_fn(key) -> params`` of the embedding.
      classes: outputs of the training head: all training classes, counting rotations.
      feature_dim: embedding width ``D``.
      head: ``"linear"`` (Baseline) or ``"cosine"`` (Baseline++), in training and at test.
      test_rule: ``"finetune"`` a fresh N-way head on the support set, or ``"nn"``.
      inner_lr: test-time fine-tuning step size.
      inner_steps: default test-time fine-tuning steps (``adapt``'s ``steps=None``).
      finetune_body: fine-tune the embedding along with the head.
      scale: the cosine head's temperature ``s``.
      task_map: how the meta-batch of training batches is mapped (:func:`~mamlx.algorithms.map_tasks`).

    Returns:
      A :class:`MetaLearner` whose ``outer_loss`` takes a
      :class:`~mamlx.tasks.batches.LabeledBatch` and whose ``adapt`` returns a
      :class:`TransferState` (fine-tuning) or an :class:`NNState`.

    Raises:
      ValueError: a setting out of range, named.
    """
    _check_choice("head", head, HEADS)
    _check_choice("test_rule", test_rule, TEST_RULES)
    for name, value in (("classes", classes), ("feature_dim", feature_dim)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    inner.check_steps(inner_steps, "test-time steps")
    inner.check_positive(inner_lr, "inner_lr")
    inner.check_positive(scale, "scale")
    check_task_map(task_map)

    def head_logits(h: Params, features: Array) -> Array:
        if head == "cosine":
            return cosine_logits(features, h["w"], scale)
        return features @ h["w"] + h["b"]

    def init(key: PRNGKey) -> Params:
        k_body, k_head = jax.random.split(key)
        body = init_fn(k_body)
        dtype = jax.tree.leaves(body)[0].dtype  # the head in the embedding's precision
        w = jax.nn.initializers.lecun_normal()(k_head, (feature_dim, classes), dtype)
        h = {"w": w} if head == "cosine" else {"w": w, "b": jnp.zeros((classes,), dtype)}
        return {"embed": body, "head": h}

    def outer_loss(params: Params, batch: LabeledBatch, key=None):
        del key  # deterministic
        logits = head_logits(params["head"], embed_fn(params["embed"], batch.x))
        return task_metrics(logits, batch.y)

    def fresh_head(features: Array, labels: Array) -> Params:
        s = labels.shape[0]
        if head == "cosine":  # imprinted: the support class means
            return {"w": prototypes(features, labels).T}
        zeros = jnp.zeros((features.shape[-1], s), features.dtype)
        return {"w": zeros, "b": jnp.zeros((s,), features.dtype)}

    def adapt(params: Params, support_x, support_y, steps=None, key=None):
        del key  # deterministic
        steps = inner.check_steps(inner_steps if steps is None else steps, "test-time steps")
        body = params["embed"]
        features = embed_fn(body, support_x)
        if test_rule == "nn":
            return NNState(body, features, class_one_hot(support_y))
        counts = class_counts(support_y)
        h0 = fresh_head(features, support_y)
        if not finetune_body:
            loss = lambda h, f, y: cross_entropy(mask_absent(head_logits(h, f), counts), y)
            h, _ = inner.adapt(loss, h0, features, support_y, steps=steps, optimizer=inner_lr)
            return TransferState(body, h, counts)

        def loss_all(p, x, y):
            logits = head_logits(p["head"], embed_fn(p["embed"], x))
            return cross_entropy(mask_absent(logits, counts), y)

        p, _ = inner.adapt(
            loss_all,
            {"embed": body, "head": h0},
            support_x,
            support_y,
            steps=steps,
            optimizer=inner_lr,
        )
        return TransferState(p["embed"], p["head"], counts)

    def predict(state, x: Array) -> Array:
        features = embed_fn(state.body, x)
        if isinstance(state, NNState):
            return nearest_neighbour_logits(features, state.support, state.onehot)
        return mask_absent(head_logits(state.head, features), state.counts)

    return gradient_learner(init, adapt, predict, outer_loss, task_map)
