"""Verification losses: angular-margin softmax (SphereFace, CosFace, ArcFace) and triplets.

**Angular margins** (the combined form of Deng et al., ArcFace, CVPR 2019, Sec. 3):
features ``f`` and class weights ``w`` are L2-normalised, ``cos θ_j = f̂·ŵ_j``, and the
true class ``y`` gets a margin,

    logit_y = s · (ψ(m1·θ_y + m2) − m3),     logit_j = s · cos θ_j  (j ≠ y)

* SphereFace (Liu et al., CVPR 2017): multiplicative ``m1 = m`` (the paper's m = 4),
  with the paper's monotone extension ``ψ(φ) = (−1)^k cos φ − 2k`` for
  ``φ ∈ [kπ, (k+1)π]`` (Eq. 6), so the target logit falls monotonically over θ ∈ [0, π].
* ArcFace (Deng et al. 2019): additive angle ``m2 = 0.5``, ``s = 64``. Where
  ``θ + m2 > π`` the official code (insightface ``arcface_torch/losses.py``,
  ``easy_margin=False``) replaces ``cos(θ + m2)`` by ``cos θ − m2·sin m2`` (its
  ``cos θ − sin(π − m)·m``): still decreasing in θ, unlike ``cos(θ + m2)`` past π.
  That fallback applies for ``m1 = 1``; with ``m1 > 1`` the SphereFace extension does.
* CosFace (Wang et al., CVPR 2018): additive cosine ``m3 = 0.35`` with ``s = 64``;
  AM-softmax (Wang, Cheng, Liu & Liu, IEEE SPL 2018) is the same loss at ``s = 30``.

With ``m1 = 1, m2 = 0, m3 = 0`` the logits are exactly ``s · cos θ`` (no ``arccos`` is
taken): the normalised softmax.

**Triplets** (Schroff, Kalenichenko & Philbin, FaceNet, CVPR 2015): ``max(0, d(a,p) −
d(a,n) + α)`` over anchor-positive-negative triplets mined inside the batch, squared
Euclidean distances by default (FaceNet: on L2-normalised embeddings, α = 0.2):

* ``"batch_hard"`` (Hermans, Beyer & Leibe 2017, "In defense of the triplet loss"):
  per anchor, its farthest positive and nearest negative; mean over anchors.
* ``"semi_hard"`` (FaceNet, Sec. 3.2): per anchor-positive pair, the nearest negative
  farther than the positive (``d(a,p) < d(a,n)``; the hinge is non-zero only when also
  ``d(a,n) < d(a,p) + α``, FaceNet's semi-hard band); where no negative is farther than
  the positive, the *farthest* negative of the anchor. This is the fallback of
  TensorFlow Addons' ``triplet_semihard_loss`` (``negatives_inside``: "If no such
  negative exists, uses the largest negative distance instead"), whose mean over all
  anchor-positive pairs (zero hinges included) is the loss here too.

All masks, no Python loops over the batch: jittable and vmappable.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mamlx.algorithms.metric_based import squared_distances
from mamlx.losses import check_label_range
from mamlx.types import Array

__all__ = [
    "MININGS",
    "Triplets",
    "angular_margin_logits",
    "angular_margin_loss",
    "check_margins",
    "check_triplet_settings",
    "l2_normalize",
    "mine_triplets",
    "pairwise_distances",
    "sphereface_psi",
    "triplet_loss",
]

MININGS = ("semi_hard", "batch_hard")
#: ``cos θ`` is clipped to ``±(1 − _COS_EPS)`` before ``arccos`` (finite gradients).
_COS_EPS = 1e-6


def check_margins(s: float, m1: float = 1.0, m2: float = 0.0, m3: float = 0.0) -> None:
    """Raise a ``ValueError`` naming the first margin setting out of its range.

    ``s > 0``; ``m1`` an integer ``>= 1`` (SphereFace's multiplicative margin: ψ is
    defined for integer ``m``); ``0 <= m2 < π/2`` (an angle); ``0 <= m3 < 1`` (a cosine
    offset). All finite.

    Example:
      >>> check_margins(64.0, m2=0.5)
      >>> check_margins(64.0, m1=2.5)
      Traceback (most recent call last):
      ...
      ValueError: m1 (SphereFace's multiplicative margin) must be an integer >= 1, got 2.5
    """

    def number(v) -> bool:
        return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)

    for name, v in (("s", s), ("m1", m1), ("m2", m2), ("m3", m3)):
        if not number(v) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
    if s <= 0:
        raise ValueError(f"s (the logit scale) must be > 0, got {s!r}")
    if m1 < 1 or float(m1) != int(m1):
        raise ValueError(
            f"m1 (SphereFace's multiplicative margin) must be an integer >= 1, got {m1!r}"
        )
    if not 0 <= m2 < math.pi / 2:
        raise ValueError(f"m2 (ArcFace's additive angle) must lie in [0, π/2), got {m2!r}")
    if not 0 <= m3 < 1:
        raise ValueError(f"m3 (CosFace's additive cosine margin) must lie in [0, 1), got {m3!r}")


def l2_normalize(x: Array, axis: int = -1, eps: float = 1e-12) -> Array:
    """``x / max(‖x‖, eps)`` along ``axis`` (finite gradients, also at 0).

    Example:
      >>> l2_normalize(jnp.array([[3.0, 4.0]])).tolist()
      [[0.6000000238418579, 0.800000011920929]]
    """
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps * eps))


def sphereface_psi(phi: Array) -> Array:
    """SphereFace's monotone extension of the cosine, ``ψ(φ) = (−1)^k cos φ − 2k`` with
    ``k = ⌊φ/π⌋`` (Liu et al. 2017, Eq. 6, for ``φ = mθ``): equal to ``cos φ`` on
    ``[0, π]``, continuous and decreasing on ``[0, ∞)``.

    Example:
      >>> [round(float(sphereface_psi(jnp.float32(p))), 4) for p in (0.0, math.pi, 1.5 * math.pi)]
      [1.0, -1.0, -2.0]
    """
    k = jnp.floor(phi / jnp.pi)
    sign = 1.0 - 2.0 * jnp.mod(k, 2.0)
    return sign * jnp.cos(phi) - 2.0 * k


def _target_cosine(cos: Array, m1: float, m2: float, m3: float) -> Array:
    """``ψ(m1·θ + m2) − m3`` of the true class's ``cos θ`` (see the module docstring)."""
    if m1 == 1 and m2 == 0:
        return cos - m3
    theta = jnp.arccos(jnp.clip(cos, -1.0 + _COS_EPS, 1.0 - _COS_EPS))
    if m1 == 1:  # ArcFace, with the official fallback past θ + m2 = π
        target = jnp.where(theta + m2 <= jnp.pi, jnp.cos(theta + m2), cos - m2 * math.sin(m2))
    else:  # SphereFace
        target = sphereface_psi(m1 * theta + m2)
    return target - m3


def angular_margin_logits(
    features: Array,
    weights: Array,
    labels: Array,
    *,
    s: float,
    m1: float = 1.0,
    m2: float = 0.0,
    m3: float = 0.0,
) -> Array:
    """Margin logits ``s·(ψ(m1θ_y + m2) − m3)`` for the true class, ``s·cos θ_j`` elsewhere.

    See the module docstring for the three papers' settings and the fallbacks that keep
    the target logit decreasing in θ over [0, π].

    Args:
      features: ``(B, D)`` embeddings (normalised here).
      weights: ``(C, D)`` class weights (normalised here).
      labels: ``(B,)`` integer classes in ``[0, C)``.
      s: logit scale (> 0).
      m1: SphereFace's multiplicative angular margin (integer >= 1).
      m2: ArcFace's additive angular margin, in [0, π/2).
      m3: CosFace's additive cosine margin, in [0, 1).

    Returns:
      ``(B, C)`` logits. Traced labels out of range give a row of NaN (the loss, and
      :func:`mamlx.fit`, then stop).

    Raises:
      ValueError: margins out of range, shapes that do not match, or concrete labels
        outside ``[0, C)``.

    Example:
      >>> f, w = jnp.array([[1.0, 0.0]]), jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> angular_margin_logits(f, w, jnp.array([0]), s=2.0, m3=0.5).tolist()
      [[1.0, 0.0]]
    """
    check_margins(s, m1, m2, m3)
    features, weights = jnp.asarray(features), jnp.asarray(weights)
    if features.ndim != 2 or weights.ndim != 2 or features.shape[1] != weights.shape[1]:
        raise ValueError(
            f"features (B, D) and weights (C, D) must share D, got {features.shape} and "
            f"{weights.shape}"
        )
    if jnp.shape(labels) != features.shape[:1]:
        raise ValueError(f"labels must have shape {features.shape[:1]}, got {jnp.shape(labels)}")
    classes = weights.shape[0]
    check_label_range(labels, classes, "angular_margin_logits labels")
    cos = l2_normalize(features) @ l2_normalize(weights).T
    onehot = jax.nn.one_hot(labels, classes, dtype=bool)
    true_cos = jnp.sum(jnp.where(onehot, cos, 0.0), axis=1)
    target = _target_cosine(true_cos, m1, m2, m3)
    logits = s * jnp.where(onehot, target[:, None], cos)
    bad = (labels < 0) | (labels >= classes)
    return jnp.where(bad[:, None], jnp.nan, logits)


def angular_margin_loss(
    features: Array,
    weights: Array,
    labels: Array,
    *,
    s: float,
    m1: float = 1.0,
    m2: float = 0.0,
    m3: float = 0.0,
) -> Array:
    """Mean softmax cross-entropy of :func:`angular_margin_logits` (SphereFace's A-Softmax,
    CosFace's LMCL, ArcFace's additive angular margin loss).

    Example:
      >>> f, w = jnp.eye(2), jnp.eye(2)
      >>> plain = angular_margin_loss(f, w, jnp.array([0, 1]), s=1.0)
      >>> float(angular_margin_loss(f, w, jnp.array([0, 1]), s=1.0, m2=0.5)) > float(plain)
      True
    """
    logits = angular_margin_logits(features, weights, labels, s=s, m1=m1, m2=m2, m3=m3)
    safe = jnp.clip(labels, 0, weights.shape[0] - 1)  # bad rows are NaN already
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, safe))


# --- triplets ------------------------------------------------------------------------------


def pairwise_distances(embeddings: Array, squared: bool = True) -> Array:
    """``(B, B)`` squared (default) or plain Euclidean distances, exact 0 on the diagonal
    and a finite gradient there (no ``sqrt`` of 0 is differentiated).

    Example:
      >>> pairwise_distances(jnp.array([[0.0, 0.0], [3.0, 4.0]]), squared=False).tolist()
      [[0.0, 5.0], [5.0, 0.0]]
    """
    d2 = squared_distances(embeddings, embeddings)
    if squared:
        return d2
    positive = d2 > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, d2, 1.0)), 0.0)


class Triplets(NamedTuple):
    """Mined triplets (see :func:`mine_triplets`).

    Batch-hard: one triplet per anchor, fields of shape ``(B,)``. Semi-hard: one per
    anchor-positive pair ``[a, p]``, fields ``(B, B)``.

    Attributes:
      positive, negative: indices of the positive and of the mined negative.
      d_ap, d_an: their distances to the anchor (differentiable).
      valid: which entries are triplets (a positive and a negative exist).
    """

    positive: Array
    negative: Array
    d_ap: Array
    d_an: Array
    valid: Array


def check_triplet_settings(margin: float, mining: str) -> None:
    """Raise a ``ValueError`` unless ``margin`` is a finite number > 0 and ``mining`` one
    of :data:`MININGS`.

    Example:
      >>> check_triplet_settings(0.0, "semi_hard")
      Traceback (most recent call last):
      ...
      ValueError: margin must be a finite number > 0, got 0.0
    """
    ok = isinstance(margin, (int, float, np.integer, np.floating)) and not isinstance(margin, bool)
    if not ok or not math.isfinite(margin) or margin <= 0:
        raise ValueError(f"margin must be a finite number > 0, got {margin!r}")
    if mining not in MININGS:
        raise ValueError(f"mining must be one of {MININGS}, got {mining!r}")


def _check_triplet_args(embeddings: Array, labels: Array, margin, mining: str) -> None:
    check_triplet_settings(margin, mining)
    if jnp.ndim(embeddings) != 2 or jnp.shape(labels) != jnp.shape(embeddings)[:1]:
        raise ValueError(
            f"embeddings must be (B, D) and labels (B,), got {jnp.shape(embeddings)} and "
            f"{jnp.shape(labels)}"
        )
    if isinstance(labels, jax.core.Tracer):
        return  # traced: a batch without triplets gives a NaN loss, fit() stops
    values = np.asarray(labels)
    same = values[:, None] == values[None, :]
    if not (same.sum() > len(values)):
        raise ValueError(
            f"triplet mining needs a positive pair (two examples of one class); every label "
            f"of {values.tolist()} occurs once"
        )
    if same.all():
        raise ValueError(
            f"triplet mining needs a negative (two classes); every label is {values[0]!r}"
        )


def mine_triplets(
    embeddings: Array, labels: Array, *, mining: str = "semi_hard", squared: bool = True
) -> Triplets:
    """Mine triplets inside a batch (see the module docstring for both rules).

    Indices are chosen without gradient; ``d_ap`` and ``d_an`` are gathered from the
    distance matrix, so the loss differentiates through the chosen distances.

    Args:
      embeddings: ``(B, D)``.
      labels: ``(B,)`` integer classes.
      mining: ``"batch_hard"`` or ``"semi_hard"``.
      squared: squared Euclidean distances (FaceNet) or plain ones (Hermans et al.).

    Returns:
      :class:`Triplets`.

    Example:
      >>> e = jnp.array([[0.0], [1.0], [3.0], [10.0]])
      >>> t = mine_triplets(e, jnp.array([0, 0, 0, 1]), mining="batch_hard", squared=False)
      >>> t.positive.tolist()[:3], t.negative.tolist()[:3]
      ([2, 2, 0], [3, 3, 3])
    """
    _check_triplet_args(embeddings, labels, 1.0, mining)
    dist = pairwise_distances(embeddings, squared)
    d = jax.lax.stop_gradient(dist)
    n = labels.shape[0]
    same = labels[:, None] == labels[None, :]
    pos = same & ~jnp.eye(n, dtype=bool)
    neg = ~same
    has_neg = neg.any(axis=1)
    rows = jnp.arange(n)
    if mining == "batch_hard":
        p = jnp.argmax(jnp.where(pos, d, -jnp.inf), axis=1)
        q = jnp.argmin(jnp.where(neg, d, jnp.inf), axis=1)
        valid = pos.any(axis=1) & has_neg
        return Triplets(p, q, dist[rows, p], dist[rows, q], valid)
    # semi-hard: for anchor a, its negatives sorted by distance; the first one farther
    # than d(a, p) (searchsorted), else the farthest negative (TF Addons' fallback).
    neg_d = jnp.where(neg, d, jnp.inf)
    order = jnp.argsort(neg_d, axis=1)
    sorted_d = jnp.take_along_axis(neg_d, order, axis=1)
    count = neg.sum(axis=1)
    first = jax.vmap(lambda row, v: jnp.searchsorted(row, v, side="right"))(sorted_d, d)
    farthest = jnp.maximum(count - 1, 0)[:, None]
    slot = jnp.where(first < count[:, None], first, farthest)
    q = jnp.take_along_axis(order, slot, axis=1)  # (B, B): [a, p] -> negative index
    p = jnp.broadcast_to(rows[None, :], (n, n))
    d_an = jnp.take_along_axis(dist, q, axis=1)
    return Triplets(p, q, dist, d_an, pos & has_neg[:, None])


def triplet_loss(
    embeddings: Array,
    labels: Array,
    *,
    margin: float,
    mining: str = "semi_hard",
    squared: bool = True,
) -> Array:
    """Triplet loss ``mean max(0, d(a,p) − d(a,n) + margin)`` over the mined triplets.

    Embeddings are used as given (FaceNet normalises them first: :func:`l2_normalize`).

    Args:
      embeddings: ``(B, D)``.
      labels: ``(B,)`` integer classes; the batch needs a positive pair and two classes.
      margin: α > 0 (FaceNet: 0.2 on normalised embeddings, squared distances).
      mining: ``"batch_hard"`` or ``"semi_hard"`` (module docstring).
      squared: squared Euclidean distances (default) or plain ones.

    Returns:
      Scalar loss; NaN for a traced batch without a triplet (:func:`mamlx.fit` stops).

    Raises:
      ValueError: ``margin <= 0``, an unknown ``mining``, shapes that do not match, or
        concrete labels without a positive pair or without two classes.

    Example:
      >>> e = jnp.array([[0.0], [0.1], [0.25]])
      >>> round(float(triplet_loss(e, jnp.array([0, 0, 1]), margin=0.2, squared=False)), 4)
      0.1
    """
    _check_triplet_args(embeddings, labels, margin, mining)
    t = mine_triplets(embeddings, labels, mining=mining, squared=squared)
    hinge = jnp.maximum(t.d_ap - t.d_an + margin, 0.0)
    return jnp.sum(jnp.where(t.valid, hinge, 0.0)) / jnp.sum(t.valid)
