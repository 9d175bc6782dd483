"""Verification ("are these two images of the same class?") for every embedding learner.

Omniglot stands in for faces: a person is a character, a trial two drawings, genuine
when both show the same character, an impostor trial otherwise; test characters are
never seen in training.

* :func:`verifier` turns a learner (or a trained :class:`mamlx.runs.Run`) into a
  :class:`Verifier` ``(score, same)``. The score of a pair ``(x1, x2)`` is the learner's
  own one-shot logit of ``x1`` for the class whose single support example is ``x2``
  (``predict(adapt(params, x2, 0..P-1), x1)``, the diagonal). So one rule serves every
  metric learner: ProtoNet ``−‖f(x1) − f(x2)‖²``; the triplet and angular-margin
  learners ``−‖f̂(x1) − f̂(x2)‖² = 2 cos θ − 2`` (cosine similarity up to an increasing
  affine map, so every threshold and metric is that of the cosine); Siamese networks
  their learned ``b + α·|f(x1) − f(x2)|``. Higher means "more likely the same".
* :func:`sample_trials`: genuine and impostor pairs, half each, deterministic per seed.
* Metrics (NumPy): :func:`roc_curve`, :func:`roc_auc`, :func:`equal_error_rate`,
  :func:`threshold_at_far`, :func:`tar_at_far`, and :func:`verification_report` with
  95% bootstrap intervals, the threshold of each false-accept rate chosen on
  validation trials (other characters than the test ones) and applied to the test trials.

A pair is accepted ("same") when its score is *strictly greater* than the threshold.

**Batch norm.** The Conv-4 normalises with each call's batch statistics, so pairs are
scored in chunks of about ``chunk`` pairs (all ``x2`` of a chunk embedded in one call,
all ``x1`` in another), the same chunks for every learner given the same trials.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mamlx._checks import check_count
from mamlx.algorithms.base import MetaLearner
from mamlx.algorithms.siamese import Pairs, pair_sampler, roc_auc
from mamlx.tasks.fewshot import images_as_float
from mamlx.types import Array, Params

__all__ = [
    "Verifier",
    "equal_error_rate",
    "roc_auc",
    "roc_curve",
    "sample_trials",
    "score_trials",
    "tar_at_far",
    "threshold_at_far",
    "verification_report",
    "verifier",
]


class Verifier(NamedTuple):
    """Pure verification functions (see :func:`verifier`).

    Attributes:
      score: ``score(params, x1, x2) -> (P,)`` scores, higher = more likely the same class
        (jitted; one compile per number of pairs).
      same: ``same(params, x1, x2, threshold) -> (P,)`` bool, ``score > threshold``.
    """

    score: Callable[[Params, Array, Array], Array]
    same: Callable[[Params, Array, Array, Any], Array]


def _learner_of(obj: Any) -> MetaLearner:
    """The learner of a :class:`MetaLearner` or of a trained run (checked: embedding)."""
    config = getattr(obj, "config", None)
    if config is not None and hasattr(obj, "learner"):
        entry = config.entry
        if entry.network != "embedding":
            raise ValueError(
                f"verification scores pairs with an embedding learner's one-shot rule; "
                f"{config.algo!r} adapts a classifier of {config.ways} outputs"
            )
        return obj.learner
    if isinstance(obj, MetaLearner):
        return obj
    raise ValueError(f"verifier takes a MetaLearner or a trained run, got {type(obj).__name__}")


def _chunks(total: int, chunk: int) -> list[tuple[int, int]]:
    """``[(size, count)]``: ``total`` pairs in ``ceil(total / chunk)`` chunks whose sizes
    differ by at most one (no chunk of a single pair beside big ones: batch norm)."""
    n = -(-total // chunk)
    small, big = divmod(total, n)
    return [(s, c) for s, c in ((small + 1, big), (small, n - big)) if c]


def verifier(learner: Any, *, chunk: int = 100) -> Verifier:
    """Verification functions of an embedding learner (see the module docstring).

    Args:
      learner: a :class:`MetaLearner` of the metric family (ProtoNet, the triplet and
        angular-margin learners, Siamese networks, ...), or a trained
        :class:`mamlx.runs.Run` of one.
      chunk: pairs per embedding call (batch-norm statistics are a chunk's).

    Returns:
      A :class:`Verifier`.

    Raises:
      ValueError: a run of a learner that adapts a classifier, or a bad ``chunk``.

    Example:
      >>> from mamlx import protonet
      >>> from mamlx.models import model
      >>> from mamlx.models.embedding import ConvEmbedding
      >>> embed_fn, init_fn = model(lambda r: ConvEmbedding(1, filters=8, blocks=2, rngs=r))
      >>> v = verifier(protonet(embed_fn, init_fn), chunk=4)
      >>> params = init_fn(jax.random.PRNGKey(0))
      >>> x = jax.random.normal(jax.random.PRNGKey(1), (10, 8, 8, 1))
      >>> v.score(params, x, x[::-1]).shape
      (10,)
      >>> v.score(params, x, x).tolist() == [0.0] * 10  # ProtoNet: −‖f(x1) − f(x2)‖²
      True
    """
    learner = _learner_of(learner)
    chunk = check_count("chunk", chunk)

    def pair_scores(params: Params, x1: Array, x2: Array) -> Array:
        labels = jnp.arange(x2.shape[0], dtype=jnp.int32)
        return jnp.diagonal(learner.predict(learner.adapt(params, x2, labels), x1))

    @jax.jit
    def score(params: Params, x1: Array, x2: Array) -> Array:
        x1, x2 = images_as_float(jnp.asarray(x1)), images_as_float(jnp.asarray(x2))
        if x1.shape != x2.shape or x1.ndim < 2 or x1.shape[0] < 1:
            raise ValueError(f"x1 and x2 must be (P, ...) of one shape, got {x1.shape}, {x2.shape}")
        out, start = [], 0
        for size, count in _chunks(x1.shape[0], chunk):
            stop = start + size * count
            a = x1[start:stop].reshape(count, size, *x1.shape[1:])
            b = x2[start:stop].reshape(count, size, *x2.shape[1:])
            out.append(jax.lax.map(lambda ab: pair_scores(params, *ab), (a, b)).reshape(-1))
            start = stop
        return jnp.concatenate(out)

    def same(params: Params, x1: Array, x2: Array, threshold) -> Array:
        return score(params, x1, x2) > threshold

    return Verifier(score, same)


def sample_trials(data: Array, num_trials: int, *, seed: int = 0) -> Pairs:
    """Genuine and impostor trials from held-out classes, shuffled, deterministic per seed.

    ``num_trials // 2`` genuine pairs (two distinct examples of one class) and the rest
    impostor pairs (two distinct classes), classes and examples drawn uniformly
    (:func:`mamlx.algorithms.pair_sampler`, no rotations), in a seeded random order.

    Args:
      data: ``(classes >= 2, examples >= 2, H, W, C)`` images of the held-out classes.
      num_trials: number of pairs, at least 2.
      seed: the trials' seed.

    Returns:
      :class:`~mamlx.algorithms.siamese.Pairs` ``(x1, x2, same)``, ``same`` 1.0 / 0.0.

    Example:
      >>> t = sample_trials(jnp.zeros((5, 3, 4, 4, 1)), 6, seed=1)
      >>> t.x1.shape, float(t.same.sum())
      ((6, 4, 4, 1), 3.0)
    """
    num_trials = check_count("num_trials", num_trials, low=2)
    key = jax.random.key(seed)
    pairs = pair_sampler(num_trials).sample(key, data)
    order = jax.random.permutation(jax.random.fold_in(key, 1), num_trials)
    return Pairs(*(a[order] for a in pairs))


def score_trials(verifier: Verifier, params: Params, trials: Pairs) -> tuple[np.ndarray, ...]:
    """``(scores, labels)`` of a trial set as NumPy (float64 scores, bool labels)."""
    scores = np.asarray(verifier.score(params, trials.x1, trials.x2), dtype=np.float64)
    return scores, np.asarray(trials.same) > 0.5


# --- metrics (NumPy) -------------------------------------------------------------------------


def _split(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Genuine and impostor scores; both must occur and every score be finite."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores but {labels.size} labels")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 1 (genuine) or 0 (impostor), got {np.unique(labels)}")
    bad = int((~np.isfinite(scores)).sum())
    if bad:
        raise ValueError(f"{bad} of {scores.size} scores are not finite (a diverged model?)")
    labels = labels.astype(bool)
    if labels.all() or not labels.any():
        raise ValueError("verification metrics need both genuine (1) and impostor (0) trials")
    return scores[labels], scores[~labels]


def _roc(genuine: np.ndarray, impostor: np.ndarray) -> tuple[np.ndarray, ...]:
    thresholds = np.unique(np.concatenate([genuine, impostor]))[::-1]
    thresholds = np.append(thresholds, -np.inf)
    g, i = np.sort(genuine), np.sort(impostor)
    tar = (g.size - np.searchsorted(g, thresholds, side="right")) / g.size
    far = (i.size - np.searchsorted(i, thresholds, side="right")) / i.size
    return far, tar, thresholds


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points ``(far, tar, thresholds)``: point ``j`` accepts ``score > thresholds[j]``.

    Thresholds are the distinct scores from the highest (point ``(0, 0)``) down, then
    ``-inf`` (``(1, 1)``); ``far`` and ``tar`` are non-decreasing. The trapezoid area
    under the points is :func:`roc_auc` (ties count one half).

    Example:
      >>> far, tar, t = roc_curve([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0])
      >>> far.tolist(), tar.tolist()
      ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
    """
    return _roc(*_split(scores, labels))


def _eer(genuine: np.ndarray, impostor: np.ndarray) -> float:
    far, tar, _ = _roc(genuine, impostor)
    gap = far + tar - 1.0  # FAR − FRR: −1 at the first point, +1 at the last
    j = int(np.argmax(gap >= 0))
    if gap[j] == 0 or j == 0:
        return float(far[j])
    w = -gap[j - 1] / (gap[j] - gap[j - 1])
    return float(far[j - 1] + w * (far[j] - far[j - 1]))


def equal_error_rate(scores, labels) -> float:
    """Equal error rate: where the ROC curve, joined by straight segments between its
    points, crosses FAR = FRR (= 1 − TAR).

    0 for separable scores, 0.5 for scores that do not depend on the label.

    Example:
      >>> equal_error_rate([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0])
      0.0
      >>> equal_error_rate([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0])
      0.5
    """
    return _eer(*_split(scores, labels))


def _check_far(far: float) -> float:
    if not (isinstance(far, (int, float, np.floating)) and 0 < far <= 1):
        raise ValueError(f"far (a false accept rate) must lie in (0, 1], got {far!r}")
    return float(far)


def _threshold(impostor: np.ndarray, far: float) -> float:
    allowed = math.floor(far * impostor.size * (1 + 1e-12))  # false accepts allowed
    if allowed >= impostor.size:
        return -np.inf
    return float(np.sort(impostor)[::-1][allowed])


def threshold_at_far(scores, labels, far: float) -> float:
    """The lowest threshold whose false accept rate on these trials is at most ``far``.

    With impostor scores sorted from the highest, ``k = ⌊far · n_impostors⌋`` false
    accepts are allowed and the threshold is the ``(k+1)``-th highest impostor score
    (accept ``score > threshold``). With fewer than ``1 / far`` impostor trials that is
    the highest impostor score (FAR 0). Choose it on validation trials and apply it to
    test trials (:func:`verification_report`).

    Example:
      >>> threshold_at_far([0.9, 0.7, 0.5, 0.3, 0.1], [1, 0, 1, 0, 0], 0.34)
      0.3
    """
    far = _check_far(far)
    return _threshold(_split(scores, labels)[1], far)


def tar_at_far(scores, labels, far: float, threshold: float | None = None) -> float:
    """True accept rate ``P(score > t | genuine)`` at a false accept rate.

    ``t`` is ``threshold`` when given (chosen elsewhere, e.g. on validation trials),
    else :func:`threshold_at_far` of these trials (the ROC curve read at ``far``).

    Example:
      >>> tar_at_far([0.9, 0.7, 0.5, 0.3, 0.1], [1, 0, 1, 0, 0], 0.34)
      1.0
    """
    far = _check_far(far)
    genuine, impostor = _split(scores, labels)
    t = _threshold(impostor, far) if threshold is None else float(threshold)
    return float(np.mean(genuine > t))


def _interval(values: Sequence[float]) -> list[float]:
    lo, hi = np.percentile(np.asarray(values, dtype=np.float64), [2.5, 97.5])
    return [float(lo), float(hi)]


def verification_report(
    test_scores,
    test_labels,
    val_scores,
    val_labels,
    *,
    fars: Sequence[float] = (1e-2, 1e-3),
    resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """AUC, EER and TAR at each FAR of the test trials, each with a 95% interval.

    TAR@FAR uses the threshold chosen on the *validation* trials
    (:func:`threshold_at_far`), applied to the test trials; the FAR it actually gives on
    the test trials is reported beside. Intervals are percentile bootstraps over trials
    (``resamples`` draws, seeded): genuine and impostor test trials are resampled
    separately (their numbers kept), and for TAR@FAR the validation impostor trials too,
    so the threshold's own sampling error is in the interval. Trials that share a
    character are not independent, so the intervals are somewhat optimistic.

    Args:
      test_scores, test_labels: scores and 1/0 (genuine/impostor) labels of test trials.
      val_scores, val_labels: the same on validation trials (other classes).
      fars: false accept rates in (0, 1].
      resamples: bootstrap draws (at least 1).
      seed: the bootstrap's seed.

    Returns:
      ``{"auc": {...}, "eer": {...}, "tar@far=F": {...}, "trials": {...}}``, each metric a
      dict with ``value`` and ``ci95`` ``[low, high]``; TAR entries also have
      ``threshold`` (from validation) and ``test_far``.

    Example:
      >>> rng = np.random.default_rng(0)
      >>> labels = np.arange(400) % 2
      >>> r = verification_report(rng.normal(labels), labels, rng.normal(labels), labels,
      ...                         fars=(0.1,), resamples=50)
      >>> sorted(r), 0.7 < r["auc"]["value"] < 0.85
      (['auc', 'eer', 'tar@far=0.1', 'trials'], True)
    """
    resamples = check_count("resamples", resamples)
    fars = [_check_far(f) for f in fars]
    gen, imp = _split(test_scores, test_labels)
    vgen, vimp = _split(val_scores, val_labels)
    thresholds = {f: _threshold(vimp, f) for f in fars}
    auc = lambda g, i: roc_auc(np.concatenate([g, i]), np.r_[np.ones(g.size), np.zeros(i.size)])
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {"auc": [], "eer": [], **{f: [] for f in fars}}
    for _ in range(resamples):
        g = gen[rng.integers(0, gen.size, gen.size)]
        i = imp[rng.integers(0, imp.size, imp.size)]
        vi = vimp[rng.integers(0, vimp.size, vimp.size)]
        draws["auc"].append(auc(g, i))
        draws["eer"].append(_eer(g, i))
        for f in fars:
            draws[f].append(float(np.mean(g > _threshold(vi, f))))
    out: dict[str, Any] = {
        "auc": {"value": auc(gen, imp), "ci95": _interval(draws["auc"])},
        "eer": {"value": _eer(gen, imp), "ci95": _interval(draws["eer"])},
    }
    for f in fars:
        t = thresholds[f]
        out[f"tar@far={f:g}"] = {
            "value": float(np.mean(gen > t)),
            "ci95": _interval(draws[f]),
            "threshold": t,
            "test_far": float(np.mean(imp > t)),
        }
    out["trials"] = {
        "test_genuine": int(gen.size),
        "test_impostor": int(imp.size),
        "val_genuine": int(vgen.size),
        "val_impostor": int(vimp.size),
        "resamples": resamples,
    }
    return out
