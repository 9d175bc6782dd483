"""Task losses and metrics shared by every meta-learner."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mamlx.types import Array, Metrics


def _check_labels(logits: Array, labels: Array, name: str) -> None:
    """Require ``labels.shape == logits.shape[:-1]`` and, for concrete labels, ``0 <= labels < C``.

    The shape check is static (fine under jit and vmap). The range check needs the
    label values, so it runs only when they are concrete (eager calls, or labels
    closed over at trace time): traced labels are not checked, which keeps the
    compiled path free of host callbacks.
    """
    logits_shape, labels_shape = jnp.shape(logits), jnp.shape(labels)
    if len(logits_shape) < 1 or labels_shape != logits_shape[:-1]:
        raise ValueError(
            f"{name}: integer labels of shape {labels_shape} do not match logits of shape "
            f"{logits_shape}; labels must have the logits' shape without the class axis "
            f"({logits_shape[:-1]})"
        )
    check_label_range(labels, logits_shape[-1], name)


def check_label_range(labels: Array, num_classes: int, name: str) -> None:
    """For concrete integer ``labels``, require ``0 <= labels < num_classes``.

    Traced labels (jit, vmap, scan) are not checked: no host round trip. Callers make
    their result NaN instead, so that :func:`mamlx.fit` stops and names the labels.
    """
    if isinstance(labels, jax.core.Tracer):
        return  # traced (jit, vmap, scan): no host round trip; the loss is NaN, fit() stops
    values = np.asarray(labels)
    bad = np.unique(values[(values < 0) | (values >= num_classes)])
    if bad.size:
        shown = (
            bad.tolist() if bad.size <= 10 else f"{bad[:10].tolist()} (and {bad.size - 10} more)"
        )
        raise ValueError(
            f"{name}: label value(s) {shown} out of range for {num_classes} classes; "
            f"integer labels must lie in [0, {num_classes}) (labels are 0..N-1 within a task; "
            "out of range, a class is silently dropped or the loss is NaN)"
        )


def mse(pred: Array, y: Array) -> Array:
    """Mean squared error, the sine-wave regression loss of Finn et al. (2017).

    Args:
      pred: predictions.
      y: targets of exactly ``pred``'s shape.

    Returns:
      The mean of ``(pred - y)²`` over all elements.

    Raises:
      ValueError: if the shapes differ (e.g. ``(S, 1)`` predictions and ``(S,)``
        targets, which would otherwise broadcast to an ``(S, S)`` mean).
    """
    if jnp.shape(pred) != jnp.shape(y):
        raise ValueError(
            f"mse: predictions of shape {jnp.shape(pred)} and targets of shape {jnp.shape(y)} "
            "differ; they would broadcast silently, so reshape the targets to the model's "
            "output shape"
        )
    return jnp.mean(jnp.square(pred - y))


def cross_entropy(logits: Array, labels: Array) -> Array:
    """Mean softmax cross-entropy with integer class labels.

    Traced labels (under ``jit``) outside ``[0, C)``, negative ones included, make the
    loss and its gradient NaN, which the training loop reports (:class:`mamlx.train.NonFiniteLossError`);
    without this a label of -1 would silently read the last class.

    Raises:
      ValueError: if ``labels.shape != logits.shape[:-1]``, or if concrete (not
        traced) labels lie outside ``[0, logits.shape[-1])``.
    """
    _check_labels(logits, labels, "cross_entropy")
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    valid = (labels >= 0) & (labels < jnp.shape(logits)[-1])
    # A NaN factor, not jnp.where: the gradient turns NaN too, never a silent partial one.
    return jnp.mean(losses * jnp.where(valid, 1.0, jnp.nan).astype(losses.dtype))


def accuracy(logits: Array, labels: Array) -> Array:
    """Fraction of arg-max predictions equal to the integer labels.

    A row with a NaN logit (a diverged model, or out-of-range labels under ``jit``) counts
    as wrong: ``argmax`` of it would otherwise read as a prediction of class 0. The loss
    is NaN there, so the divergence still shows, and a mean over tasks stays a number.

    Raises:
      ValueError: if ``labels.shape != logits.shape[:-1]``, or if concrete (not
        traced) labels lie outside ``[0, logits.shape[-1])``.
    """
    _check_labels(logits, labels, "accuracy")
    correct = (jnp.argmax(logits, axis=-1) == labels) & ~jnp.isnan(logits).any(axis=-1)
    return jnp.mean(correct)


def default_loss(y: Array):
    """Cross-entropy for integer targets (classification), MSE otherwise (regression)."""
    return cross_entropy if jnp.issubdtype(y.dtype, jnp.integer) else mse


def task_metrics(pred: Array, y: Array, loss_fn=None) -> tuple[Array, Metrics]:
    """Loss and metrics of one task's predictions.

    Args:
      pred: model outputs (regression values or class logits).
      y: targets; integer targets are treated as class labels and add ``accuracy``.
      loss_fn: ``loss_fn(pred, y) -> scalar``; defaults to :func:`default_loss`.

    Returns:
      ``(loss, {"loss": loss[, "accuracy": acc]})``.
    """
    loss_fn = loss_fn or default_loss(y)
    loss = loss_fn(pred, y)
    metrics = {"loss": loss}
    if jnp.issubdtype(y.dtype, jnp.integer):
        metrics["accuracy"] = accuracy(pred, y)
    return loss, metrics


def is_finite(x: Array) -> Array:
    """True where every element of ``x`` is finite."""
    return jnp.all(jnp.isfinite(x))
