"""NumPy references for the metric learners (issue 25): their logits and losses from the
papers' equations, given the embedding network as a plain function.

Each ``*_logits(params, support_x, support_y, query_x, key)`` returns the ``(Q, N)`` scores
of the ``N`` classes present in the support set (labels ``0..N-1``), in float64 NumPy; each
``*_reference`` is a reference in the sense of :mod:`mamlx.references`,
``reference(params, batch, key=None) -> (mean loss, None)`` (with ``reference.logits``,
the task's logits as above, except Siamese's): the loss only, so
:func:`mamlx.testing.check_reference` compares the meta-gradient with central differences
of this loss, not of the learner's own.

* Prototypical Networks (Snell et al. 2017): class means, −‖f(x) − p_c‖², cross-entropy.
* Matching Networks (Vinyals et al. 2016): cosine attention over the support set,
  ``log Σ_i a_i 1[y_i = c]``; with full-context embeddings the bidirectional LSTM ``g`` and
  the attention LSTM ``f`` of the paper's appendix (``h_0 = f'(x̂)``, ``c_0 = 0``,
  ``r_{k−1}`` the read-out of ``h_{k−1}``), written out in NumPy.
* Relation Networks (Sung et al. 2018, Eq. 1–2): pairs ``C(f(x_i), f(x_j))`` of the class
  feature (first) and the query feature (second) along channels, the relation module, a
  sigmoid, and the MSE to one-hot targets.
* Hallucination (Wang et al. 2018): ``G(e, z) = e + MLP([e, z])`` on the 1-shot seed with
  the noise drawn from the task's key as the learner documents it, then ProtoNet.
* Siamese networks (Koch et al. 2015): ``σ(b + Σ_j α_j |f(x₁)_j − f(x₂)_j|)``, binary
  cross-entropy over same/different pairs; one-shot classification by the most similar
  support example.

Example:
  >>> import numpy as np
  >>> logits = protonet_logits(lambda p, x: x, None, np.eye(2), np.array([0, 1]), np.eye(2))
  >>> logits.tolist()
  [[-0.0, -2.0], [-2.0, -0.0]]
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from mamlx.references import Reference, tasks


def _np(a) -> np.ndarray:
    return np.asarray(a, np.float64)


def _embed(embed_fn: Callable, params, x) -> np.ndarray:
    e = _np(embed_fn(params, x))
    return e.reshape(e.shape[0], -1)


def _classes(support_y) -> int:
    y = np.asarray(support_y)
    n = int(y.max()) + 1
    if sorted(set(y.tolist())) != list(range(n)):
        raise ValueError(f"support labels must be 0..N-1, got {sorted(set(y.tolist()))}")
    return n


def _cross_entropy(logits: np.ndarray, y) -> float:
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-np.mean(logp[np.arange(len(logp)), np.asarray(y)]))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _loss_reference(logits_fn: Callable, loss: Callable) -> Reference:
    def reference(params, batch, key=None):
        keys = (
            [None] * len(tasks(batch))
            if key is None
            else list(jax.random.split(key, len(tasks(batch))))
        )
        values = [
            loss(logits_fn(params, ep.support_x, ep.support_y, ep.query_x, k), ep.query_y)
            for ep, k in zip(tasks(batch), keys, strict=True)
        ]
        return float(np.mean(values)), None

    reference.logits = logits_fn  # (params, support_x, support_y, query_x, task key)
    return reference


def protonet_logits(embed_fn: Callable, params, support_x, support_y, query_x, key=None):
    """``−‖f(x) − p_c‖²`` with prototypes ``p_c`` the class means of the support embeddings."""
    s, q, y = (
        _embed(embed_fn, params, support_x),
        _embed(embed_fn, params, query_x),
        np.asarray(support_y),
    )
    protos = np.stack([s[y == c].mean(0) for c in range(_classes(y))])
    return -((q[:, None, :] - protos[None]) ** 2).sum(-1)


def protonet_reference(embed_fn: Callable) -> Reference:
    """Prototypical Networks' query cross-entropy (params: the embedding's)."""
    embed_fn = jax.jit(embed_fn)  # compiled once: the references are called many times
    logits = lambda p, sx, sy, qx, key: protonet_logits(embed_fn, p, sx, sy, qx)  # noqa: E731
    return _loss_reference(logits, _cross_entropy)


def _lstm_cell(cell: dict, x: np.ndarray, h: np.ndarray, c: np.ndarray):
    """A Flax ``nnx.LSTMCell`` step in NumPy (input kernels ``i*``, hidden kernels and biases ``h*``)."""

    def pre(gate):
        return (
            x @ _np(cell["i" + gate]["kernel"])
            + h @ _np(cell["h" + gate]["kernel"])
            + _np(cell["h" + gate]["bias"])
        )

    c = _sigmoid(pre("f")) * c + _sigmoid(pre("i")) * np.tanh(pre("g"))
    return _sigmoid(pre("o")) * np.tanh(c), c


def _cell(params: dict, name: str) -> dict:
    cell = dict(params[name])
    cell["if"] = cell.pop("if_")  # Flax's name of the forget gate's input kernel
    return cell


def full_context_embeddings(fce: dict, support: np.ndarray, query: np.ndarray, steps: int):
    """Vinyals et al. (2016), Appendix A: ``(g(x_i), f(x̂))``.

    ``g(x_i) = f'(x_i) + h→_i + h←_i`` (a bidirectional LSTM over the support set in its
    order); ``ĥ_k, c_k = LSTM(f'(x̂), [h_{k−1}, r_{k−1}], c_{k−1})``, ``h_k = ĥ_k + f'(x̂)``,
    ``r_{k−1} = Σ_i softmax_i(h_{k−1}·g(x_i)) g(x_i)`` from ``h_0 = f'(x̂)``, ``c_0 = 0``;
    ``f(x̂) = h_K``. The read-out enters the cell next to the input (the same gate
    pre-activations as a hidden state ``[h, r]``).
    """
    d = support.shape[1]

    def run(cell, xs):
        h, c, out = np.zeros(d), np.zeros(d), []
        for x in xs:
            h, c = _lstm_cell(cell, x[None], h[None], c[None])
            h, c = h[0], c[0]
            out.append(h)
        return np.stack(out)

    g = (
        support
        + run(_cell(fce, "forward"), support)
        + run(_cell(fce, "backward"), support[::-1])[::-1]
    )
    h, c = query, np.zeros_like(query)
    for _ in range(steps):
        r = _softmax(h @ g.T) @ g
        h_hat, c = _lstm_cell(_cell(fce, "attend"), np.concatenate([query, r], 1), h, c)
        h = h_hat + query
    return g, h


def matching_logits(
    embed_fn: Callable, params, support_x, support_y, query_x, key=None, *, scale=1.0, fce_steps=0
):
    """``log Σ_i a(x̂, x_i) 1[y_i = c]`` with ``a`` the softmax of ``scale · cos(f(x̂), g(x_i))``."""
    s = _embed(embed_fn, params["embed"], support_x)
    q = _embed(embed_fn, params["embed"], query_x)
    if fce_steps:
        s, q = full_context_embeddings(params["fce"], s, q, fce_steps)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    att = _softmax(scale * unit(q) @ unit(s).T)
    y = np.asarray(support_y)
    return np.log(np.stack([att[:, y == c].sum(1) for c in range(_classes(y))], 1))


def matching_reference(embed_fn: Callable, *, scale: float = 1.0, fce_steps: int = 0) -> Reference:
    """Matching Networks' query negative log-likelihood (params ``{"embed"[, "fce"]}``)."""
    embed_fn = jax.jit(embed_fn)

    def logits(p, sx, sy, qx, key):
        return matching_logits(embed_fn, p, sx, sy, qx, scale=scale, fce_steps=fce_steps)

    return _loss_reference(logits, _cross_entropy)


def relation_logits(
    embed_fn: Callable,
    relation_fn: Callable,
    params,
    support_x,
    support_y,
    query_x,
    key=None,
    *,
    aggregate: str = "sum",
):
    """Relation scores ``σ(g([Σ_{y_i=c} f(x_i), f(x_q)]))`` (Sung et al. 2018, Eq. 1): the
    class's feature map first, the query's second, concatenated along channels; the relation
    module ``relation_fn(params, pairs)`` sees the ``Q·N`` pairs of one task in one batch."""
    s, q = _np(embed_fn(params["embed"], support_x)), _np(embed_fn(params["embed"], query_x))
    y = np.asarray(support_y)
    n = _classes(y)
    pool = np.sum if aggregate == "sum" else np.mean
    classes = np.stack([pool(s[y == c], axis=0) for c in range(n)])
    pairs = np.concatenate(
        [
            np.broadcast_to(classes[None], (len(q), *classes.shape)),
            np.broadcast_to(q[:, None], (len(q), n, *q.shape[1:])),
        ],
        axis=-1,
    )
    out = _np(relation_fn(params["relation"], pairs.reshape(-1, *pairs.shape[2:])))
    return _sigmoid(out.reshape(len(q), n))


def relation_reference(
    embed_fn: Callable, relation_fn: Callable, *, aggregate: str = "sum"
) -> Reference:
    """Relation Networks' MSE of the scores to one-hot targets (Sung et al. 2018, Eq. 2)."""
    embed_fn, relation_fn = jax.jit(embed_fn), jax.jit(relation_fn)

    def logits(p, sx, sy, qx, key):
        return relation_logits(embed_fn, relation_fn, p, sx, sy, qx, aggregate=aggregate)

    def mse(scores, y):
        target = np.eye(scores.shape[1])[np.asarray(y)]
        return float(np.mean((scores - target) ** 2))

    return _loss_reference(logits, mse)


def _mlp(layers, x: np.ndarray) -> np.ndarray:
    """A ReLU MLP (:class:`mamlx.models.MLP`'s layers, a list or a dict by index) in NumPy."""
    layers = [layers[i] for i in sorted(layers)] if isinstance(layers, dict) else layers
    for i, layer in enumerate(layers):
        x = x @ _np(layer["kernel"]) + _np(layer["bias"])
        if i < len(layers) - 1:
            x = np.maximum(x, 0.0)
    return x


def hallucination_logits(
    embed_fn: Callable,
    params,
    support_x,
    support_y,
    query_x,
    key,
    *,
    num_hallucinated: int,
    noise_dim: int,
):
    """ProtoNet on the support set plus ``G(e, z) = e + MLP([e, z])`` per class and slot.

    One-shot only (the seed is the class's example; the learner draws seeds among several
    examples from content hashes). The noise ``z`` is the learner's documented draw:
    ``jax.random.normal(split(key)[1], (S, M, D_z))`` for the task's ``key``.
    """
    raw = embed_fn(params["embed"], support_x)
    s, q = _np(raw).reshape(len(raw), -1), _embed(embed_fn, params["embed"], query_x)
    y = np.asarray(support_y)
    n, m = _classes(y), num_hallucinated
    if len(y) != n:
        raise ValueError("the hallucination reference is one-shot (one support example per class)")
    z = _np(jax.random.normal(jax.random.split(key)[1], (len(y), m, noise_dim), raw.dtype))
    protos = []
    for c in range(n):
        e = s[y == c][0]
        fake = [
            e + _mlp(params["generator"]["layers"], np.concatenate([e, z[c, j]])[None])[0]
            for j in range(m)
        ]
        protos.append(np.mean([e, *fake], axis=0))
    protos = np.stack(protos)
    return -((q[:, None, :] - protos[None]) ** 2).sum(-1)


def hallucination_reference(
    embed_fn: Callable, *, num_hallucinated: int, noise_dim: int
) -> Reference:
    """Hallucination's query cross-entropy; needs the key the learner's ``meta_grad`` gets."""
    embed_fn = jax.jit(embed_fn)

    def logits(p, sx, sy, qx, key):
        if key is None:
            raise ValueError("the hallucination reference needs the key given to meta_grad")
        return hallucination_logits(
            embed_fn, p, sx, sy, qx, key, num_hallucinated=num_hallucinated, noise_dim=noise_dim
        )

    return _loss_reference(logits, _cross_entropy)


def siamese_pair_logits(params, e1: np.ndarray, e2: np.ndarray) -> np.ndarray:
    """``b + Σ_j α_j |e1_j − e2_j|`` for every pair of rows, ``(len(e1), len(e2))``."""
    return float(params["bias"]) + np.abs(e1[:, None] - e2[None]) @ _np(params["weight"])


def siamese_logits(embed_fn: Callable, params, support_x, support_y, query_x, key=None):
    """One-shot classification: each class's best same-logit over its support examples."""
    s = _embed(embed_fn, params["embed"], support_x)
    pair = siamese_pair_logits(params, _embed(embed_fn, params["embed"], query_x), s)
    y = np.asarray(support_y)
    return np.stack([pair[:, y == c].max(1) for c in range(_classes(y))], 1)


def _bce(logits: np.ndarray, target: np.ndarray) -> float:
    # −[t log σ(z) + (1 − t) log(1 − σ(z))], with log σ(z) = −log(1 + e^{−z})
    return float(
        np.mean(target * np.logaddexp(0, -logits) + (1 - target) * np.logaddexp(0, logits))
    )


def siamese_reference(embed_fn: Callable) -> Reference:
    """Koch et al.'s binary cross-entropy: over :class:`~mamlx.algorithms.siamese.Pairs`
    (each pair embedded in one batch of ``[x1, x2]``), or over every query-support pair of
    an episode (support and queries embedded apart), with target ``y_q = y_i``."""
    embed_fn = jax.jit(embed_fn)

    def reference(params, batch, key=None):
        del key
        values = []
        for t in tasks(batch):
            if hasattr(t, "same"):
                e = _embed(embed_fn, params["embed"], np.concatenate([t.x1, t.x2]))
                e1, e2 = e[: len(t.x1)], e[len(t.x1) :]
                logits = float(params["bias"]) + np.abs(e1 - e2) @ _np(params["weight"])
                values.append(_bce(logits, _np(t.same)))
            else:
                s = _embed(embed_fn, params["embed"], t.support_x)
                q = _embed(embed_fn, params["embed"], t.query_x)
                same = np.asarray(t.query_y)[:, None] == np.asarray(t.support_y)[None]
                values.append(_bce(siamese_pair_logits(params, q, s), same.astype(np.float64)))
        return float(np.mean(values)), None

    return reference
