"""Siamese networks for one-shot image recognition (Koch, Zemel & Salakhutdinov, ICML DL Workshop 2015).

Twin copies of one embedding ``f_φ`` and a learned weighted L1 distance give the
probability that two images show the same class:

    p(same | x₁, x₂) = sigmoid(b + Σ_j α_j |f_φ(x₁)_j − f_φ(x₂)_j|)

trained with binary cross-entropy on same/different pairs
(:func:`pair_sampler`). One-shot N-way classification labels a query with the
class of its most similar support example, ``logit_c(x) = max_{y_i = c}
(b + α·|f(x) − f(x_i)|)``, so the model fits the :class:`MetaLearner` shape for
:func:`mamlx.evaluate`. Verification is scored with accuracy at p = 0.5 and
the ROC AUC (:func:`roc_auc`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mamlx.algorithms.base import MetaLearner, check_task_map, map_tasks, mean_metrics
from mamlx.algorithms.metric_based import class_counts, mask_absent
from mamlx.episodes import Episode
from mamlx.losses import accuracy
from mamlx.models.adapter import ApplyFn
from mamlx.tasks.fewshot import check_image_dtype, images_as_float, rotate_images
from mamlx.types import Array, Params, PRNGKey

__all__ = [
    "PairSampler",
    "Pairs",
    "Siamese",
    "pair_sampler",
    "roc_auc",
    "siamese",
    "siamese_net",
    "verification_metrics",
]

TRAIN_ON = ("pairs", "episodes")


class Pairs(NamedTuple):
    """Image pairs ``(P, H, W, C)`` each and ``same`` ``(P,)`` float 1.0 / 0.0 targets."""

    x1: Array
    x2: Array
    same: Array


class PairSampler(NamedTuple):
    """Pure functions sampling same/different pairs (a :class:`~mamlx.tasks.Sampler`).

    Attributes:
      pairs, rotate: the settings the sampler was built with (see :func:`pair_sampler`).
      sample: ``sample(key, data) -> Pairs`` of one batch of pairs.
      sample_batch: ``sample_batch(key, data, num_tasks) -> Pairs`` with a leading axis
        of ``num_tasks`` (``jax.vmap`` of ``sample`` over ``num_tasks`` split keys,
        :func:`~mamlx.tasks.base.vmap_sample`); ``num_tasks`` static under ``jax.jit``.
    """

    pairs: int
    rotate: bool
    sample: Callable[[PRNGKey, Array], Pairs]
    sample_batch: Callable[[PRNGKey, Array, int], Pairs]


def pair_sampler(pairs: int, *, rotate: bool = False) -> PairSampler:
    """Sampler of balanced same/different pairs from a ``(classes, examples, H, W, C)`` array.

    ``sample(key, data)`` returns :class:`Pairs` whose first ``pairs // 2``
    pairs are two distinct examples of one class and the rest examples of two
    distinct classes (uniform over classes and examples). Pure JAX: jittable and
    vmappable; ``sample_batch(key, data, n)`` adds a leading axis of ``n``
    batches (so it plugs into :func:`mamlx.fit`; see :class:`~mamlx.tasks.Sampler`).
    ``uint8`` images are scaled to [0, 1] (divided by 255), bool images become 0 / 1,
    floats are used as they are; other integer dtypes raise a ``ValueError`` (their
    value range is unknown). ``rotate=True`` treats 90-degree rotations as new classes, as
    :func:`mamlx.tasks.fewshot_sampler` does.

    Args:
      pairs: pairs per sample (at least 2).
      rotate: rotations as new classes.

    Returns:
      A :class:`PairSampler`.

    Example:
      >>> s = pair_sampler(4)
      >>> p = s.sample(jax.random.key(0), jnp.zeros((10, 20, 8, 8, 1)))
      >>> p.x1.shape, p.same.tolist()
      ((4, 8, 8, 1), [1.0, 1.0, 0.0, 0.0])
    """
    if int(pairs) != pairs or pairs < 2:
        raise ValueError(f"pairs must be an integer >= 2, got {pairs!r}")
    pairs, rotate = int(pairs), bool(rotate)

    def sample(key: PRNGKey, data: Array) -> Pairs:
        check_image_dtype(data)
        data = jnp.asarray(data)
        if data.ndim != 5 or data.shape[0] < 2 or data.shape[1] < 2:
            raise ValueError(
                f"data must be (classes >= 2, examples >= 2, H, W, C), got {data.shape}"
            )
        classes, examples = data.shape[:2]
        total = classes * (4 if rotate else 1)
        same = jnp.arange(pairs) < pairs // 2
        k = jax.random.split(key, 5)
        a = jax.random.randint(k[0], (pairs,), 0, total)
        b = jnp.where(same, a, (a + jax.random.randint(k[1], (pairs,), 1, total)) % total)
        e1 = jax.random.randint(k[2], (pairs,), 0, examples)
        e2 = jnp.where(
            same,
            (e1 + jax.random.randint(k[3], (pairs,), 1, examples)) % examples,
            jax.random.randint(k[4], (pairs,), 0, examples),
        )

        def images(cls, ex):
            x = images_as_float(data[cls % classes, ex])
            return jax.vmap(rotate_images)(x, cls // classes) if rotate else x

        x1 = images(a, e1)
        return Pairs(x1, images(b, e2), same.astype(x1.dtype))

    def sample_batch(key: PRNGKey, data: Array, num_tasks: int) -> Pairs:
        from mamlx.tasks.base import vmap_sample  # the samplers' one batching convention

        return vmap_sample(sample, key, data, num_tasks)

    return PairSampler(pairs, rotate, sample, sample_batch)


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve (numpy), ties counted as one half.

    Mann-Whitney form: ``AUC = (Σ ranks of positives − n₊(n₊+1)/2) / (n₊ n₋)`` with
    average ranks for tied scores.

    Args:
      scores: higher means "more likely positive".
      labels: 1 (or True) for positives, 0 for negatives; both must occur.

    Returns:
      AUC in [0, 1] (0.5 = chance).

    Example:
      >>> roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
      0.75
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("roc_auc needs both positive and negative labels")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(scores.size, dtype=np.float64)
    ranks[order] = np.arange(1, scores.size + 1)
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]  # average rank within ties
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def verification_metrics(probs, same) -> dict[str, float]:
    """Verification accuracy (threshold 0.5) and ROC AUC of same-probabilities.

    Example:
      >>> verification_metrics([0.9, 0.2, 0.6, 0.4], [1, 0, 0, 1])
      {'accuracy': 0.5, 'auc': 0.75}
    """
    probs = np.asarray(probs, dtype=np.float64).ravel()
    same = np.asarray(same).ravel() > 0.5
    return {"accuracy": float(np.mean((probs > 0.5) == same)), "auc": roc_auc(probs, same)}


class Siamese(NamedTuple):
    """Verification functions of a Siamese network (see :func:`siamese_net`).

    Attributes:
      init: ``init(key) -> {"embed", "weight", "bias"}``.
      same_logit: ``same_logit(params, x1, x2) -> (P,)`` logits of "same class".
      same: ``same(params, x1, x2) -> (P,)`` probabilities in [0, 1].
      pair_loss: ``pair_loss(params, pairs) -> (loss, metrics)``, binary cross-entropy.
      pair_logits: ``pair_logits(params, e1, e2) -> (len(e1), len(e2))`` from embeddings.
    """

    init: Callable
    same_logit: Callable
    same: Callable
    pair_loss: Callable
    pair_logits: Callable


def siamese_net(
    embed_fn: ApplyFn, init_fn: Callable[[PRNGKey], Params], *, feature_dim: int
) -> Siamese:
    """Twin network with a learned weighted L1 distance (Koch et al. 2015, Sec. 3).

    Both images of a batch of pairs are embedded in one call (one set of batch
    statistics), so ``same(params, x1, x2)`` is symmetric in ``x1, x2``.

    Args:
      embed_fn: ``embed_fn(params, x) -> (B, feature_dim)``.
      init_fn: ``init_fn(key) -> params`` of the embedding.
      feature_dim: embedding size ``D`` (length of the weights α).

    Returns:
      A :class:`Siamese`.

    Example:
      >>> from mamlx.models import model
      >>> from mamlx.models.embedding import ConvEmbedding
      >>> embed_fn, init_fn = model(lambda r: ConvEmbedding(1, filters=8, blocks=3, rngs=r))
      >>> net = siamese_net(embed_fn, init_fn, feature_dim=8)
      >>> params = net.init(jax.random.PRNGKey(0))
      >>> net.same(params, jnp.ones((2, 8, 8, 1)), jnp.zeros((2, 8, 8, 1))).shape
      (2,)
    """

    def init(key: PRNGKey) -> Params:
        embed = init_fn(key)
        dtype = jax.tree.leaves(embed)[0].dtype
        # α < 0: larger distances mean "different" from the start.
        weight = jnp.full((feature_dim,), -1.0 / feature_dim**0.5, dtype)
        return {"embed": embed, "weight": weight, "bias": jnp.zeros((), dtype)}

    def check_width(params: Params, emb: Array) -> None:  # static shapes: fine under jit
        if emb.shape[-1] != params["weight"].shape[0]:
            raise ValueError(
                f"siamese: the embedding has {emb.shape[-1]} features per example but "
                f"feature_dim (the length of the weights α) is {params['weight'].shape[0]}; "
                f"pass feature_dim={emb.shape[-1]}"
            )

    def pair_logits(params: Params, e1: Array, e2: Array) -> Array:
        check_width(params, e1)
        check_width(params, e2)
        dist = jnp.abs(e1[:, None, :] - e2[None, :, :])
        return params["bias"] + dist @ params["weight"]

    def same_logit(params: Params, x1: Array, x2: Array) -> Array:
        emb = embed_fn(params["embed"], jnp.concatenate([x1, x2]))
        emb = emb.reshape(emb.shape[0], -1)
        check_width(params, emb)
        e1, e2 = emb[: x1.shape[0]], emb[x1.shape[0] :]
        return params["bias"] + jnp.abs(e1 - e2) @ params["weight"]

    def same(params: Params, x1: Array, x2: Array) -> Array:
        return jax.nn.sigmoid(same_logit(params, x1, x2))

    def pair_loss(params: Params, pairs: Pairs):
        logits = same_logit(params, pairs.x1, pairs.x2)
        loss = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, pairs.same))
        acc = jnp.mean((logits > 0) == (pairs.same > 0.5))
        return loss, {"loss": loss, "accuracy": acc}

    return Siamese(init, same_logit, same, pair_loss, pair_logits)


class SiameseState(NamedTuple):
    """Task state: params, support embeddings ``(S, D)`` and labels."""

    params: Params
    support: Array
    support_y: Array


def siamese(
    embed_fn: ApplyFn,
    init_fn: Callable[[PRNGKey], Params],
    *,
    feature_dim: int,
    train_on: str = "pairs",
    task_map: str = "vmap",
) -> MetaLearner:
    """Siamese network as a :class:`MetaLearner` (Koch et al. 2015).

    ``adapt`` embeds the support set; ``predict`` gives each class the highest
    same-logit among its support examples (one-shot: nearest support example).

    Training target (``meta_grad``):

    * ``"pairs"`` (paper): ``meta_grad(params, pairs)`` takes a batch of
      :class:`Pairs` from :func:`pair_sampler` (``sample_batch`` gives the leading
      axis) and is the gradient of the mean binary cross-entropy. It does not
      take episodes, so :func:`mamlx.testing.check_meta_learner` applies to the
      ``"episodes"`` variant.
    * ``"episodes"``: pairs formed inside few-shot episodes (every query with
      every support example, target ``y_q = y_i``); ``meta_grad`` is the gradient
      of the mean ``outer_loss``.

    ``outer_loss(params, episode)`` is the episode pair cross-entropy in both
    modes (with the classification accuracy as a metric).

    Args:
      embed_fn: ``embed_fn(params, x) -> (B, feature_dim)``.
      init_fn: ``init_fn(key) -> params`` of the embedding.
      feature_dim: embedding size.
      train_on: ``"pairs"`` or ``"episodes"``.
      task_map: ``"vmap"``, ``"map"`` or ``"auto"`` over the batch axis (:func:`~mamlx.algorithms.map_tasks`).

    Returns:
      A :class:`MetaLearner` (params as :func:`siamese_net`).

    Example:
      >>> from mamlx.models import model
      >>> from mamlx.models.embedding import ConvEmbedding
      >>> embed_fn, init_fn = model(lambda r: ConvEmbedding(1, filters=8, blocks=3, rngs=r))
      >>> learner = siamese(embed_fn, init_fn, feature_dim=8)
      >>> params = learner.init(jax.random.PRNGKey(0))
      >>> state = jax.jit(learner.adapt)(params, jnp.ones((4, 8, 8, 1)), jnp.array([0, 1, 0, 1]))
      >>> jax.jit(learner.predict)(state, jnp.ones((3, 8, 8, 1))).shape
      (3, 4)
    """
    check_task_map(task_map)
    if train_on not in TRAIN_ON:
        raise ValueError(f"train_on must be one of {TRAIN_ON}, got {train_on!r}")
    net = siamese_net(embed_fn, init_fn, feature_dim=feature_dim)

    def embed(params, x):
        e = embed_fn(params["embed"], x)
        return e.reshape(e.shape[0], -1)

    def adapt(meta_params: Params, support_x: Array, support_y: Array, steps=None, key=None):
        del steps, key  # no inner optimisation, deterministic
        return SiameseState(meta_params, embed(meta_params, support_x), support_y)

    def predict(state: SiameseState, x: Array) -> Array:
        logits = net.pair_logits(state.params, embed(state.params, x), state.support)
        n = state.support_y.shape[0]
        best = jax.ops.segment_max(logits.T, state.support_y, num_segments=n).T
        return mask_absent(best, class_counts(state.support_y))

    def outer_loss(meta_params: Params, episode: Episode, key=None):
        del key  # deterministic
        state = adapt(meta_params, episode.support_x, episode.support_y)
        q = embed(meta_params, episode.query_x)
        logits = net.pair_logits(meta_params, q, state.support)
        target = (episode.query_y[:, None] == episode.support_y[None, :]).astype(logits.dtype)
        loss = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, target))
        n = state.support_y.shape[0]
        best = jax.ops.segment_max(logits.T, state.support_y, num_segments=n).T
        cls = mask_absent(best, class_counts(state.support_y))
        return loss, {"loss": loss, "accuracy": accuracy(cls, episode.query_y)}

    def batch_loss(params, batch, fn):
        losses, metrics = map_tasks(fn, params, batch, task_map)
        return jnp.mean(losses), mean_metrics(metrics)

    def meta_grad(meta_params: Params, batch, key=None):
        del key  # deterministic
        fn = net.pair_loss if train_on == "pairs" else outer_loss
        return jax.grad(batch_loss, has_aux=True)(meta_params, batch, fn)

    return MetaLearner(
        init=net.init, adapt=adapt, predict=predict, outer_loss=outer_loss, meta_grad=meta_grad
    )
