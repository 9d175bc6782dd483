"""Verification learners (triplet, SphereFace, CosFace, ArcFace) and the verification API."""

import functools
import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads
from metric_helpers import tiny_conv

from mamlx import registry
from mamlx.algorithms.angular import PAPER_MARGINS, angular_margin
from mamlx.algorithms.margin import (
    angular_margin_logits,
    angular_margin_loss,
    mine_triplets,
    triplet_loss,
)
from mamlx.algorithms.protonet import protonet
from mamlx.algorithms.siamese import Pairs, siamese
from mamlx.algorithms.triplet import triplet
from mamlx.config import FewShotConfig
from mamlx.experiments import build_learner
from mamlx.tasks import fewshot_sampler
from mamlx.tasks.batches import class_batch_sampler
from mamlx.train import fit, init_state
from mamlx.verification import (
    equal_error_rate,
    roc_auc,
    roc_curve,
    sample_trials,
    score_trials,
    tar_at_far,
    threshold_at_far,
    verification_report,
    verifier,
)

ANGULAR = ("sphereface", "cosface", "arcface")


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def unit(v, axis=-1):
    return v / np.linalg.norm(v, axis=axis, keepdims=True)


def at_angles(weights, labels, theta, seed=0):
    """Features at angle ``theta[i]`` from the weight of class ``labels[i]`` (float64)."""
    rng = np.random.default_rng(seed)
    w = unit(np.asarray(weights))[labels]
    u = rng.normal(size=w.shape)
    u = unit(u - np.sum(u * w, axis=1, keepdims=True) * w)  # orthogonal to w
    return 3.0 * (np.cos(theta)[:, None] * w + np.sin(theta)[:, None] * u)


def ce(logits, labels):
    z = logits - logits.max(1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(labels)), labels]))


# --- angular margins -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ANGULAR)
def test_margin_logits_without_margins_are_the_normalised_softmax(name, x64):
    rng = np.random.default_rng(1)
    f, w = rng.normal(size=(7, 5)), rng.normal(size=(4, 5))
    y = np.array([0, 1, 2, 3, 0, 1, 3])
    s = PAPER_MARGINS[name].s
    plain = s * unit(f) @ unit(w).T
    got = angular_margin_logits(jnp.asarray(f), jnp.asarray(w), jnp.asarray(y), s=s)
    np.testing.assert_allclose(got, plain, rtol=1e-12, atol=1e-12)
    loss = angular_margin_loss(jnp.asarray(f), jnp.asarray(w), jnp.asarray(y), s=s)
    assert float(loss) == pytest.approx(ce(plain, y), rel=1e-10)


@pytest.mark.parametrize("name", ANGULAR)
def test_true_class_logit_is_s_cos_m1_theta_plus_m2_minus_s_m3(name, x64):
    m = PAPER_MARGINS[name]
    rng = np.random.default_rng(2)
    w = rng.normal(size=(5, 6))
    y = np.array([0, 4, 2, 2, 1, 3, 0, 4])
    top = (math.pi - m.m2) / m.m1  # principal range: m1·θ + m2 <= π
    theta = rng.uniform(0.05, top - 0.05, size=len(y))
    f = at_angles(w, y, theta)
    got = np.asarray(
        angular_margin_logits(jnp.asarray(f), jnp.asarray(w), jnp.asarray(y), **m._asdict())
    )
    cos = unit(f) @ unit(w).T
    hand_theta = np.arccos(cos[np.arange(len(y)), y])
    np.testing.assert_allclose(hand_theta, theta, atol=1e-9)
    want = m.s * np.cos(m.m1 * hand_theta + m.m2) - m.s * m.m3
    np.testing.assert_allclose(got[np.arange(len(y)), y], want, rtol=1e-9, atol=1e-9)
    others = np.ones_like(cos, dtype=bool)
    others[np.arange(len(y)), y] = False
    np.testing.assert_allclose(got[others], m.s * cos[others], rtol=1e-12)
    loss = angular_margin_loss(jnp.asarray(f), jnp.asarray(w), jnp.asarray(y), **m._asdict())
    assert float(loss) == pytest.approx(ce(got, y), rel=1e-10)


def target_over_angles(theta, **margins):
    w = np.eye(2)
    f = np.stack([np.cos(theta), np.sin(theta)], 1)
    y = np.zeros(len(theta), int)
    logits = angular_margin_logits(jnp.asarray(f), jnp.asarray(w), jnp.asarray(y), **margins)
    return np.asarray(logits)[:, 0] / margins["s"]


@pytest.mark.parametrize("m1", [2, 3, 4])
def test_sphereface_extension_is_the_papers_psi_and_decreases_over_0_pi(m1, x64):
    theta = np.linspace(0.01, math.pi - 0.01, 2001)
    got = target_over_angles(theta, s=1.0, m1=m1)
    k = np.floor(m1 * theta / math.pi)
    want = (-1.0) ** k * np.cos(m1 * theta) - 2 * k  # Liu et al. 2017, Eq. 6
    np.testing.assert_allclose(got, want, atol=1e-9)
    assert np.all(np.diff(got) < 0), "ψ(θ) must fall monotonically over [0, π]"
    assert np.max(np.abs(np.diff(got))) < 0.05, "and continuously (no jumps at kπ/m)"
    assert got[-1] == pytest.approx(1 - 2 * m1, abs=1e-3)  # ψ(π) = −(2m − 1)


def test_arcface_fallback_past_pi_is_cos_theta_minus_m_sin_m(x64):
    m2 = 0.5
    theta = np.linspace(0.01, math.pi - 0.01, 2001)
    got = target_over_angles(theta, s=64.0, m2=m2)
    inside = theta + m2 <= math.pi
    np.testing.assert_allclose(got[inside], np.cos(theta[inside] + m2), atol=1e-9)
    # insightface arcface_torch: cos θ − sin(π − m)·m where cos θ <= cos(π − m)
    want = np.cos(theta[~inside]) - math.sin(math.pi - m2) * m2
    np.testing.assert_allclose(got[~inside], want, atol=1e-9)
    assert np.all(np.diff(got) < 0), "the target logit must stay decreasing in θ"


@pytest.mark.parametrize("name", ANGULAR)
def test_margin_loss_gradients_match_finite_differences(name, x64):
    m = PAPER_MARGINS[name]
    rng = np.random.default_rng(3)
    w = rng.normal(size=(4, 5))
    y = np.array([0, 1, 2, 3, 1])
    # θ in (0.35, 0.65): away from SphereFace's kπ/4 and the clip at cos θ = ±1
    f = at_angles(w, y, rng.uniform(0.35, 0.65, size=len(y)))
    loss = lambda f, w: angular_margin_loss(f, w, jnp.asarray(y), **m._asdict())
    check_grads(jax.jit(loss), (jnp.asarray(f), jnp.asarray(w)), order=1, modes=["rev"], eps=1e-6)


@pytest.mark.parametrize(
    "bad, name",
    [
        (dict(s=0.0), "s"),
        (dict(s=-1.0), "s"),
        (dict(m1=0.5), "m1"),
        (dict(m1=2.5), "m1"),
        (dict(m2=-0.1), "m2"),
        (dict(m2=math.pi / 2), "m2"),
        (dict(m3=-0.1), "m3"),
        (dict(m3=1.0), "m3"),
        (dict(m3=float("nan")), "m3"),
    ],
)
def test_margins_out_of_range_are_refused_by_name(bad, name):
    f, w, y = jnp.ones((2, 3)), jnp.ones((4, 3)), jnp.array([0, 1])
    with pytest.raises(ValueError, match=rf"^{name}\b") as err:
        angular_margin_logits(f, w, y, **{"s": 30.0, **bad})
    assert str(err.value).endswith(f"got {bad[name]!r}")
    algo = {"m1": "sphereface", "m2": "arcface"}.get(name, "cosface")
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        FewShotConfig(algo=algo, **bad)


def test_margin_labels_out_of_range_raise_eagerly_and_are_nan_when_traced():
    f, w = jnp.ones((3, 2)), jnp.eye(4, 2)
    with pytest.raises(ValueError, match=r"label value\(s\) \[4\]"):
        angular_margin_loss(f, w, jnp.array([0, 4, 1]), s=30.0, m2=0.5)
    with pytest.raises(ValueError, match=r"\[-1\]"):
        angular_margin_logits(f, w, jnp.array([0, -1, 1]), s=30.0)
    traced = jax.jit(lambda y: angular_margin_loss(f, w, y, s=30.0, m2=0.5))
    assert np.isnan(float(traced(jnp.array([0, 4, 1]))))
    assert np.isfinite(float(traced(jnp.array([0, 3, 1]))))


# --- triplets --------------------------------------------------------------------------------


def test_batch_hard_picks_the_farthest_positive_and_the_nearest_negative():
    # 1-d embeddings: distances are differences of positions.
    pos = jnp.array([[0.0], [1.0], [3.0], [3.5], [10.0], [6.0]])
    y = jnp.array([0, 0, 0, 1, 1, 2])
    t = mine_triplets(pos, y, mining="batch_hard", squared=False)
    # anchor 0: positives 1 (d 1), 2 (d 3); negatives 3 (3.5), 4 (10), 5 (6)
    # anchor 3: positive 4 (6.5); negatives 0 (3.5), 1 (2.5), 2 (0.5), 5 (2.5)
    # anchor 5: no positive (class 2 occurs once)
    assert t.positive[:5].tolist() == [2, 2, 0, 4, 3]
    assert t.negative[:5].tolist() == [3, 3, 3, 2, 5]
    np.testing.assert_allclose(t.d_ap[:5], [3.0, 2.0, 3.0, 6.5, 6.5])
    np.testing.assert_allclose(t.d_an[:5], [3.5, 2.5, 0.5, 0.5, 4.0])
    assert t.valid.tolist() == [True] * 5 + [False]
    hinge = np.maximum(np.array([3.0, 2.0, 3.0, 6.5, 6.5]) - [3.5, 2.5, 0.5, 0.5, 4.0] + 1.0, 0)
    got = triplet_loss(pos, y, margin=1.0, mining="batch_hard", squared=False)
    assert float(got) == pytest.approx(hinge.mean())
    sq = triplet_loss(pos, y, margin=1.0, mining="batch_hard")  # squared distances
    want = np.maximum(np.array([9, 4, 9, 42.25, 42.25]) - [12.25, 6.25, 0.25, 0.25, 16] + 1, 0)
    assert float(sq) == pytest.approx(want.mean())


def test_semi_hard_picks_the_nearest_negative_beyond_the_positive_else_the_farthest():
    e = jnp.array([[0.0], [1.0], [0.5], [1.1], [1.15], [3.0]])
    y = jnp.array([0, 0, 1, 2, 2, 3])
    t = mine_triplets(e, y, mining="semi_hard", squared=False)
    # (anchor 0, positive 1): d_ap 1; negatives at 0.5 (hard), 1.1 and 1.15 (semi-hard,
    # within margin 0.2), 3 (easy) -> the nearest beyond the positive: index 3.
    assert int(t.negative[0, 1]) == 3 and float(t.d_an[0, 1]) == pytest.approx(1.1)
    # (anchor 1, positive 0): d_ap 1; negatives at 0.5, 0.1, 0.15, 2.0 -> only 2.0 (index
    # 5, beyond the margin: hinge 0) is farther than the positive.
    assert int(t.negative[1, 0]) == 5
    # (anchor 3, positive 4): d_ap 0.05; every negative is farther: nearest is index 1 (0.1).
    assert int(t.negative[3, 4]) == 1
    # No negative farther than the positive: the farthest negative (TF Addons' fallback).
    e2 = jnp.array([[0.0], [5.0], [1.0], [-2.0]])
    t2 = mine_triplets(e2, jnp.array([0, 0, 1, 1]), mining="semi_hard", squared=False)
    assert int(t2.negative[0, 1]) == 3 and float(t2.d_an[0, 1]) == pytest.approx(2.0)
    assert t.valid.tolist()[0] == [False, True, False, False, False, False]
    # Hinges of the four anchor-positive pairs: (0, 1) 5 − 2 + 0.2 (fallback); (1, 0)
    # 5 − 7 + 0.2; (2, 3) 3 − 4 + 0.2; (3, 2) 3 − 7 + 0.2: only the first is positive.
    loss = triplet_loss(e2, jnp.array([0, 0, 1, 1]), margin=0.2, mining="semi_hard", squared=False)
    assert float(loss) == pytest.approx(3.2 / 4)


def reference_triplet_loss(e, y, margin, mining):
    """TF Addons' semantics, one triplet at a time (squared Euclidean distances)."""
    e, y = np.asarray(e, np.float64), np.asarray(y)
    d = ((e[:, None] - e[None]) ** 2).sum(-1)
    n = len(y)
    terms = []
    for a in range(n):
        negs = [j for j in range(n) if y[j] != y[a]]
        poss = [j for j in range(n) if y[j] == y[a] and j != a]
        if not negs or not poss:
            continue
        if mining == "batch_hard":
            terms.append(max(max(d[a, p] for p in poss) - min(d[a, q] for q in negs) + margin, 0))
            continue
        for p in poss:
            beyond = [d[a, q] for q in negs if d[a, q] > d[a, p]]
            dn = min(beyond) if beyond else max(d[a, q] for q in negs)
            terms.append(max(d[a, p] - dn + margin, 0))
    return np.mean(terms)


@pytest.mark.parametrize("mining", ["semi_hard", "batch_hard"])
def test_triplet_loss_matches_a_one_triplet_at_a_time_reference(mining, x64):
    rng = np.random.default_rng(4)
    for _ in range(5):
        e = unit(rng.normal(size=(14, 3)))
        y = rng.integers(0, 4, size=14)
        got = triplet_loss(jnp.asarray(e), jnp.asarray(y), margin=0.2, mining=mining)
        assert float(got) == pytest.approx(reference_triplet_loss(e, y, 0.2, mining), rel=1e-10)


def test_triplet_batches_without_triplets_raise_eagerly_and_are_nan_when_traced():
    e = jnp.ones((4, 2))
    with pytest.raises(ValueError, match="positive pair"):
        triplet_loss(e, jnp.array([0, 1, 2, 3]), margin=0.2)
    with pytest.raises(ValueError, match="negative"):
        triplet_loss(e, jnp.array([1, 1, 1, 1]), margin=0.2, mining="batch_hard")
    for mining in ("semi_hard", "batch_hard"):
        traced = jax.jit(lambda y, m=mining: triplet_loss(e, y, margin=0.2, mining=m))
        assert np.isnan(float(traced(jnp.array([0, 1, 2, 3]))))
        assert np.isfinite(float(traced(jnp.array([0, 0, 2, 3]))))
    with pytest.raises(ValueError, match="margin must be .* got 0"):
        triplet_loss(e, jnp.array([0, 0, 1, 1]), margin=0)
    with pytest.raises(ValueError, match="mining must be one of"):
        triplet_loss(e, jnp.array([0, 0, 1, 1]), margin=0.2, mining="hardest")
    with pytest.raises(ValueError, match="margin"):
        FewShotConfig(algo="triplet", margin=-0.2)
    with pytest.raises(ValueError, match="ways >= 2"):
        build_learner(FewShotConfig(algo="triplet", ways=1, filters=8))


# --- metrics ---------------------------------------------------------------------------------


def slow_points(scores, labels):
    """(FAR, TAR) of ``score > t`` for t over every distinct score and -inf, one at a time."""
    scores, labels = np.asarray(scores, float), np.asarray(labels).astype(bool)
    out = []
    for t in [*sorted(set(scores.tolist()), reverse=True), -np.inf]:
        out.append((np.mean(scores[~labels] > t), np.mean(scores[labels] > t), t))
    return out


def slow_eer(scores, labels):
    pts = slow_points(scores, labels)
    for (f0, t0, _), (f1, t1, _) in zip(pts, pts[1:], strict=False):
        g0, g1 = f0 - (1 - t0), f1 - (1 - t1)  # FAR − FRR
        if g0 < 0 <= g1:
            return f0 + (f1 - f0) * (-g0 / (g1 - g0))
    raise AssertionError("no crossing")


def slow_auc(scores, labels):
    scores, labels = np.asarray(scores, float), np.asarray(labels).astype(bool)
    pos, neg = scores[labels], scores[~labels]
    return np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_eer_and_tar_at_far_match_slow_references(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=300)
    scores = np.round(rng.normal(labels * 1.2), 1)  # ties on purpose
    assert roc_auc(scores, labels) == pytest.approx(slow_auc(scores, labels), abs=1e-12)
    far, tar, thresholds = roc_curve(scores, labels)
    pts = slow_points(scores, labels)
    np.testing.assert_allclose(far, [p[0] for p in pts])
    np.testing.assert_allclose(tar, [p[1] for p in pts])
    assert np.trapezoid(tar, far) == pytest.approx(roc_auc(scores, labels), abs=1e-12)
    eer = equal_error_rate(scores, labels)
    assert eer == pytest.approx(slow_eer(scores, labels), abs=1e-12)
    # the crossing lies between the best threshold's FAR and FRR
    best = min(max(f, 1 - t) for f, t, _ in pts)
    assert min(min(f, 1 - t) for f, t, _ in pts if max(f, 1 - t) == best) <= eer <= best
    for target in (0.01, 0.05, 0.2):
        ok = [(t, f, thr) for f, t, thr in pts if f <= target]
        tar_ref = max(t for t, _, _ in ok)
        assert tar_at_far(scores, labels, target) == pytest.approx(tar_ref, abs=1e-12)
        thr = threshold_at_far(scores, labels, target)
        assert np.mean(scores[labels == 0] > thr) <= target
        lower = scores[(labels == 0) & (scores < thr)]  # any lower threshold exceeds the FAR
        if lower.size:
            assert np.mean(scores[labels == 0] > lower.max()) > target


def test_metrics_on_separable_and_reversed_scores():
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.2, 0.1, 0.0, -1.0])
    assert roc_auc(scores, labels) == 1.0 and equal_error_rate(scores, labels) == 0.0
    assert tar_at_far(scores, labels, 1e-3) == 1.0
    assert roc_auc(-scores, labels) == 0.0 and equal_error_rate(-scores, labels) == 1.0
    assert equal_error_rate(np.zeros(7), labels) == 0.5
    with pytest.raises(ValueError, match="both genuine"):
        equal_error_rate(scores, np.ones(7))
    with pytest.raises(ValueError, match="far"):
        threshold_at_far(scores, labels, 0.0)
    with pytest.raises(ValueError, match="not finite"):
        roc_curve(np.r_[scores[:-1], np.nan], labels)


def test_report_takes_thresholds_from_validation_and_bootstraps_seeded_intervals():
    rng = np.random.default_rng(5)
    labels = np.arange(2000) % 2
    test = rng.normal(2.0 * labels)
    val = rng.normal(2.0 * labels) + 0.5  # shifted: its thresholds are higher
    r = verification_report(test, labels, val, labels, fars=(0.01, 0.1), resamples=200, seed=1)
    for f in (0.01, 0.1):
        entry = r[f"tar@far={f:g}"]
        assert entry["threshold"] == threshold_at_far(val, labels, f)
        assert entry["value"] == tar_at_far(test, labels, f, threshold=entry["threshold"])
        assert entry["test_far"] < f  # the shifted validation set gives a stricter threshold
    for k in ("auc", "eer", "tar@far=0.1"):
        lo, hi = r[k]["ci95"]
        assert lo <= r[k]["value"] <= hi and 0 < hi - lo < 0.2
    assert r == verification_report(
        test, labels, val, labels, fars=(0.01, 0.1), resamples=200, seed=1
    )
    other = verification_report(test, labels, val, labels, fars=(0.01, 0.1), resamples=200, seed=2)
    assert other["auc"]["ci95"] != r["auc"]["ci95"] and other["auc"]["value"] == r["auc"]["value"]


# --- verifier and trials ---------------------------------------------------------------------


def coded_data(classes=7, examples=5):
    """Pixel (0, 0) encodes the class, pixel (0, 1) the example."""
    data = np.zeros((classes, examples, 4, 4, 1), np.float32)
    data[:, :, 0, 0, 0] = np.arange(classes)[:, None]
    data[:, :, 0, 1, 0] = np.arange(examples)[None, :]
    return jnp.asarray(data)


def test_trials_are_half_genuine_deterministic_and_true_to_their_labels():
    data = coded_data()
    t = sample_trials(data, 40, seed=3)
    same = np.asarray(t.same) > 0.5
    c1, c2 = np.asarray(t.x1[:, 0, 0, 0]), np.asarray(t.x2[:, 0, 0, 0])
    e1, e2 = np.asarray(t.x1[:, 0, 1, 0]), np.asarray(t.x2[:, 0, 1, 0])
    assert same.sum() == 20
    np.testing.assert_array_equal(c1 == c2, same)
    assert np.all(e1[same] != e2[same])
    assert not np.all(same[:20]), "genuine and impostor trials are shuffled together"
    again = sample_trials(data, 40, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(t, again, strict=True))
    assert not np.array_equal(t.x1, sample_trials(data, 40, seed=4).x1)


def test_verifier_scores_are_each_learners_own_pair_score_per_chunk():
    embed_fn, init_fn = tiny_conv(blocks=2)
    x = jax.random.normal(jax.random.PRNGKey(1), (10, 8, 8, 1))
    x1, x2 = x, jnp.roll(x, 3, axis=0)
    chunks = [(0, 4), (4, 7), (7, 10)]  # 10 pairs at chunk=4: sizes 4, 3, 3

    def per_chunk(fn):
        fn = jax.jit(fn)
        return np.concatenate([fn(x1[a:b], x2[a:b]) for a, b in chunks])

    proto = protonet(embed_fn, init_fn)
    p = init_fn(jax.random.PRNGKey(0))  # one embedding for all three learners
    rng = np.random.default_rng(0)
    want = per_chunk(lambda a, b: -jnp.sum((embed_fn(p, a) - embed_fn(p, b)) ** 2, -1))
    v = verifier(proto, chunk=4)
    np.testing.assert_allclose(v.score(p, x1, x2), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(v.same(p, x1, x2, np.median(want)), want > np.median(want))
    scores, labels = score_trials(v, p, Pairs(x1, x2, jnp.arange(10) % 2))
    assert scores.dtype == np.float64 and labels.tolist() == [False, True] * 5
    np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-5)

    # One chunk (all pairs in one call each side) for the others.
    e = jax.jit(embed_fn)
    angular = angular_margin(embed_fn, init_fn, classes=3, feature_dim=16, s=30.0, m2=0.5)
    q = {"embed": p, "weight": jnp.asarray(rng.normal(size=(3, 16)), jnp.float32)}
    e1, e2 = unit(np.asarray(e(q["embed"], x1))), unit(np.asarray(e(q["embed"], x2)))
    cosine = np.sum(e1 * e2, -1)
    np.testing.assert_allclose(verifier(angular).score(q, x1, x2), 2 * cosine - 2, atol=1e-5)

    sia = siamese(embed_fn, init_fn, feature_dim=16)
    r = {"embed": p, "weight": jnp.asarray(rng.normal(size=16), jnp.float32), "bias": 0.3}
    learned = r["bias"] + np.abs(e(r["embed"], x1) - e(r["embed"], x2)) @ r["weight"]
    np.testing.assert_allclose(verifier(sia).score(r, x1, x2), learned, rtol=1e-5, atol=1e-5)
    maml_run = SimpleNamespace(config=FewShotConfig(algo="maml", filters=8), learner=None)
    with pytest.raises(ValueError, match="adapts a classifier"):
        verifier(maml_run)


# --- registry, configuration, CLI ------------------------------------------------------------


@pytest.mark.parametrize("name", ANGULAR)
def test_angular_learners_are_registered_with_their_papers_defaults(name):
    config = FewShotConfig(algo=name, filters=8)
    assert tuple(config.learner.__dict__[k] for k in ("s", "m1", "m2", "m3")) == tuple(
        PAPER_MARGINS[name]
    )
    entry = registry.get_learner(name)
    assert entry.network == "embedding" and entry.families == ("classification",)
    params = jax.eval_shape(build_learner(config).init, jax.random.PRNGKey(0))
    assert params["weight"].shape == (4400, 8)  # every training character, x4 rotations
    sampler = entry.train_sampler(config.learner, config)
    assert sampler.batch == config.ways * (config.shots + config.queries)
    rotated = jax.eval_shape(sampler.sample, jax.random.PRNGKey(0), jnp.zeros((1100, 2, 8, 8, 1)))
    assert rotated.x.shape == (10, 8, 8, 1)
    with pytest.raises(ValueError, match="classes=4400"):
        sampler.sample(jax.random.PRNGKey(0), jnp.zeros((1000, 2, 8, 8, 1)))


def test_cli_lists_the_verification_learners_and_their_settings(capsys):
    from mamlx.cli import main

    assert main(["list", "learners"]) == 0
    listed = capsys.readouterr().out
    assert all(n in listed for n in ("triplet", *ANGULAR))
    with pytest.raises(SystemExit):
        main(["train", "omniglot", "--algo", "arcface", "--help"])
    helptext = capsys.readouterr().out
    for flag in ("--m1", "--m2", "--m3", "--s S", "--margin", "--mining"):
        assert flag in helptext


# --- training smoke tests --------------------------------------------------------------------


def toy(classes, seed, examples=10, noise=0.7):
    """Class templates plus strong per-example noise (8x8)."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    templates = jax.random.normal(k1, (classes, 1, 8, 8, 1))
    return templates + noise * jax.random.normal(k2, (classes, examples, 8, 8, 1))


@functools.lru_cache(maxsize=1)
def smoke_net():
    """One 8x8 -> 2x2x8 (32 features) Conv embedding for every smoke test, and its trial
    AUC: the verifier's score of these learners, −‖ê1 − ê2‖², with each side of all
    trials embedded in one call (one compile shared by every test)."""
    embed_fn, init_fn = tiny_conv(blocks=2, filters=8)
    held_out = toy(20, seed=1)
    trials = sample_trials(held_out, 400, seed=0)
    embed = jax.jit(embed_fn)

    def auc(params):
        e1, e2 = (unit(np.asarray(embed(params["embed"], x))) for x in (trials.x1, trials.x2))
        return roc_auc(-np.sum((e1 - e2) ** 2, -1), np.asarray(trials.same))

    return embed_fn, init_fn, auc


@pytest.mark.parametrize("name", ["semi_hard", "batch_hard", *ANGULAR])
def test_training_lowers_the_loss_and_raises_held_out_verification_auc(name):
    embed_fn, init_fn, held_out_auc = smoke_net()
    if name in PAPER_MARGINS:
        learner = angular_margin(
            embed_fn, init_fn, classes=100, feature_dim=32, **PAPER_MARGINS[name]._asdict()
        )
        sampler = class_batch_sampler(48, classes=100)
    else:
        learner = triplet(embed_fn, init_fn, mining=name)
        sampler = fewshot_sampler(8, 2, 2)
    opt = optax.adam(3e-3)
    state = init_state(learner, opt, jax.random.PRNGKey(0))
    before = held_out_auc(state.params)
    losses = []
    state = fit(
        learner,
        sampler,
        opt,
        steps=200,
        meta_batch=1,
        state=state,
        data=toy(100, seed=0),
        chunk=100,
        progress=False,
        on_chunk=lambda s, rec: losses.append(rec["loss"]),
    )
    after = held_out_auc(state.params)
    assert losses[1] < losses[0], losses
    assert after > before + 0.03, (before, after)
