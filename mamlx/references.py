"""Independent references for the optimization-based learners (issue 25).

A learner's finite-difference check differentiates the same ``outer_loss`` that its
``meta_grad`` is ``jax.grad`` of, so an inner step of the wrong sign, one step too few or
the support and query sets swapped pass it. The references here recompute the task-mean
meta-loss and meta-gradient from the papers' equations by another route than the
learners take, on a plain ``apply_fn`` loss of their own (:func:`reference_loss`):

* MAML, first-order MAML, ANIL, Meta-SGD (:func:`maml_reference`,
  :func:`metasgd_reference`): the inner iterates θ_{k+1} = θ_k − a ⊙ ∇L_s(θ_k) are stored,
  and the meta-gradient is the explicit backward recursion v = ∇L_q(θ_K), then for
  k = K−1..0: v ← v − H_s(θ_k)(a ⊙ v), with Hessian-vector products by forward-over-reverse
  (``jax.jvp`` of ``jax.grad``), never by differentiating through an inner ``jax.grad``
  (first order: v = ∇L_q(θ_K)). ``a`` is α (MAML), α on the head and 0 elsewhere (ANIL) or
  the learned rates (Meta-SGD, whose rates get −Σ_k v_{k+1} ⊙ ∇L_s(θ_k)).
* MAML++ (:func:`mamlpp_reference`): the same stored iterates and backward recursion on
  the network's parameters at each step (θ_k's adapted leaves, batch-norm copy k), with the
  query loss after every step weighted by the authors' importance vector, written as their
  loop (:func:`mamlpp_importance`); the per-step copies and the per-layer, per-step rates
  get their gradients from the same recursion.
* iMAML (:func:`imaml_reference`): the same proximal SGD steps, then the implicit
  gradient (I + H_s(θ_K)/λ)^{-1} ∇L_q(θ_K) by a dense solve.
* Reptile (:func:`reptile_reference`): a NumPy loop of SGD or Adam (β₁ = 0 in the paper).
* The meta-learner LSTM (:func:`meta_lstm_reference`): the update rule in NumPy and
  finite differences over every meta-parameter, with the LSTM's loss and gradient inputs
  frozen at their recorded values (the paper's first-order gradient).
* Pre-training (:func:`pretrain_reference`): the loss at φ on support ∪ query.

A reference is ``reference(params, batch, key=None) -> (loss, grads)``: the task-mean
outer loss and ``meta_grad``'s result on a batch of tasks (leading task axis), ``grads``
``None`` where only the loss is given (MAML++'s also takes ``step=``, the training step its
objective follows). The metric learners' references are in
:mod:`mamlx.references_metric`; :func:`mamlx.testing.check_reference` compares a learner
with one. They loop over tasks and steps in Python: use them on tiny problems in float64
(``jax.enable_x64``), where learner and reference agree to about 1e-10.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from mamlx.episodes import Episode
  >>> with jax.enable_x64(True):
  ...     x = jnp.linspace(-1.0, 1.0, 6).reshape(1, 3, 2)   # one task, 3 shots
  ...     ep = Episode(x, x.sum(-1), 2 * x, x.sum(-1))
  ...     ref = maml_reference(lambda w, x: x @ w, inner_lr=0.1, inner_steps=2)
  ...     loss, grads = ref(jnp.zeros(2), ep)
  >>> grads.shape
  (2,)
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from mamlx.types import Array, Params

Reference = Callable[..., tuple[Any, Any]]


def reference_loss(pred: Array, y: Array) -> Array:
    """Cross-entropy of logits for integer labels, mean squared error otherwise (written out).

    Example:
      >>> float(reference_loss(jnp.zeros((2, 4)), jnp.array([0, 3])))  # log 4
      1.386...
    """
    if jnp.issubdtype(jnp.asarray(y).dtype, jnp.integer):
        z = pred - jnp.max(pred, axis=-1, keepdims=True)
        logp = z - jnp.log(jnp.sum(jnp.exp(z), axis=-1, keepdims=True))
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=-1))
    return jnp.mean(jnp.square(pred - y))


def tasks(batch: Any) -> list:
    """The tasks of a batch (leading task axis) as a list of per-task pytrees."""
    n = jax.tree.leaves(batch)[0].shape[0]
    return [jax.tree.map(lambda a, i=i: a[i], batch) for i in range(n)]


class _FlatLoss:
    """``apply_fn``'s :func:`reference_loss` on flat parameter vectors, its gradient and
    forward-over-reverse Hessian-vector product, each compiled once per parameter structure
    (:func:`_flat_loss`)."""

    def __init__(self, apply_fn: Callable, params: Params):
        self.unravel = ravel_pytree(params)[1]

        def loss(f, x, y):
            return reference_loss(apply_fn(self.unravel(f), x), y)

        grad = jax.grad(loss)
        self.loss = jax.jit(loss)
        self.grad = jax.jit(grad)
        self.hvp = jax.jit(lambda f, v, x, y: jax.jvp(lambda g: grad(g, x, y), (f,), (v,))[1])
        self.hessian = jax.jit(jax.jacfwd(grad))  # dense, forward-over-reverse


_FLAT_LOSSES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _flat_loss(apply_fn: Callable, params: Params) -> tuple[_FlatLoss, Array]:
    """The :class:`_FlatLoss` of ``apply_fn`` for ``params``' structure and the flat params."""
    spec = (
        jax.tree.structure(params),
        tuple((jnp.shape(a), jnp.result_type(a)) for a in jax.tree.leaves(params)),
    )
    per_fn = _FLAT_LOSSES.setdefault(apply_fn, {})
    if spec not in per_fn:
        per_fn[spec] = _FlatLoss(apply_fn, params)
    return per_fn[spec], ravel_pytree(params)[0]


def _unrolled(fl: _FlatLoss, theta: Array, rates: Array, ep, steps: int, first_order: bool):
    """One task's query loss and meta-gradients w.r.t. θ_0 and the per-coordinate rates."""
    thetas, grads = [theta], []
    for _ in range(steps):  # forward, storing every iterate
        grads.append(fl.grad(thetas[-1], ep.support_x, ep.support_y))
        thetas.append(thetas[-1] - rates * grads[-1])
    v = fl.grad(thetas[-1], ep.query_x, ep.query_y)  # adjoint of θ_K
    d_rates = jnp.zeros_like(rates)
    for k in reversed(range(steps)):  # v is the adjoint of θ_{k+1}
        d_rates = d_rates - v * grads[k]  # ∂θ_{k+1}/∂a = −diag(∇L_s(θ_k))
        if not first_order:  # (∂θ_{k+1}/∂θ_k)ᵀ v = v − H_s(θ_k)(a ⊙ v)
            v = v - fl.hvp(thetas[k], rates * v, ep.support_x, ep.support_y)
    return fl.loss(thetas[-1], ep.query_x, ep.query_y), v, d_rates


def _mean(values: list) -> Array:
    return sum(values[1:], values[0]) / len(values)


def maml_reference(
    apply_fn: Callable,
    *,
    inner_lr: float,
    inner_steps: int,
    first_order: bool = False,
    is_adapted: Callable[[tuple], bool] | None = None,
) -> Reference:
    """MAML (Finn et al. 2017), first-order MAML and ANIL by the explicit backward recursion.

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs`` of the adapted network.
      inner_lr: inner SGD step size α.
      inner_steps: inner steps K.
      first_order: drop the Hessian terms (v = ∇L_q(θ_K)).
      is_adapted: ``is_adapted(key_path) -> bool`` for the leaves the inner loop adapts
        (ANIL: the head; Raghu et al. 2020); default every leaf.

    Returns:
      ``reference(params, batch, key=None) -> (mean query loss, mean meta-gradient)``.
    """

    def reference(params: Params, batch, key=None):
        del key
        fl, flat = _flat_loss(apply_fn, params)
        keep = jax.tree_util.tree_map_with_path(
            lambda path, a: jnp.full_like(
                a, 1.0 if is_adapted is None or is_adapted(path) else 0.0
            ),
            params,
        )
        rates = inner_lr * ravel_pytree(keep)[0]
        out = [_unrolled(fl, flat, rates, ep, inner_steps, first_order) for ep in tasks(batch)]
        return _mean([o[0] for o in out]), fl.unravel(_mean([o[1] for o in out]))

    return reference


def metasgd_reference(
    apply_fn: Callable, *, inner_steps: int, first_order: bool = False, learn_lr: bool = True
) -> Reference:
    """Meta-SGD (Li et al. 2017): θ' = θ − α ⊙ ∇L_s(θ) with learned rates α.

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs``.
      inner_steps: inner steps K.
      first_order: drop the Hessian terms (α still gets −Σ_k v ⊙ ∇L_s(θ_k)).
      learn_lr: ``False``: α's meta-gradient is zero.

    Returns:
      A reference on meta-parameters ``{"params": θ, "lr": α}``.
    """

    def reference(meta_params: Params, batch, key=None):
        del key
        fl, flat = _flat_loss(apply_fn, meta_params["params"])
        rates = ravel_pytree(meta_params["lr"])[0]
        out = [_unrolled(fl, flat, rates, ep, inner_steps, first_order) for ep in tasks(batch)]
        d_lr = _mean([o[2] for o in out]) if learn_lr else jnp.zeros_like(rates)
        grads = {"params": fl.unravel(_mean([o[1] for o in out])), "lr": fl.unravel(d_lr)}
        return _mean([o[0] for o in out]), grads

    return reference


def mamlpp_importance(epoch: int, inner_steps: int, msl_epochs: int) -> np.ndarray:
    """MAML++'s multi-step loss weights at an epoch < ``msl_epochs``, as the authors' loop
    over the steps (Antoniou et al. 2019; their ``get_per_step_loss_importance_vector``).

    Example:
      >>> mamlpp_importance(1, 2, 2).tolist()
      [0.25, 0.75]
    """
    k = inner_steps
    w = np.ones(k) / k
    decay = 1.0 / k / msl_epochs
    floor = 0.03 / k
    for i in range(k - 1):
        w[i] = max(w[i] - epoch * decay, floor)
    w[-1] = min(w[-1] + epoch * (k - 1) * decay, 1.0 - (k - 1) * floor)
    return w


def _names_norm(path: tuple) -> bool:
    """A key of the path names a normalization layer (``norm``, ``norms``, ``batch_norm``)."""
    names = (getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)
    return any("norm" in str(n) for n in names)


def mamlpp_reference(
    apply_fn: Callable,
    *,
    inner_lr: float,
    inner_steps: int,
    first_order: bool = False,
    multi_step_loss: bool = False,
    msl_epochs: int = 10,
    msl_weights: Any = None,
    first_order_epochs: int = 0,
    per_step_bn: bool = False,
    lslr: bool = False,
    epoch_steps: float = 500,
    is_norm: Callable[[tuple], bool] = _names_norm,
) -> Reference:
    """MAML++ (Antoniou et al. 2019) by the explicit backward recursion over stored iterates.

    The network at inner step k has θ_k on the adapted leaves and, with ``per_step_bn``,
    the normalization leaves' copy β_k (copy K for the query after the last step); the
    inner step is θ_{k+1} = θ_k − r_k ⊙ ∇_θ L_s(θ_k, β_k) with r_k the step-k rate of each
    array (``lslr``) or α, and the objective Σ_{k=1..K} w_k L_q(θ_k, β_k). Backward, with v
    the adjoint of θ_k: v += w_k ∇_θ L_q(θ_k, β_k), β_k gets w_k ∇_β L_q(θ_k, β_k); then
    r_{k−1}'s gradient is −Σ v ⊙ ∇_θ L_s(θ_{k−1}, β_{k−1}) over each array, and (second
    order) the Hessian-vector product h = H_s(θ_{k−1}, β_{k−1})(r_{k−1} ⊙ v) by
    forward-over-reverse gives v ← v − h_θ and β_{k−1} −h_β. The weights w are fixed
    (``msl_weights``), the importance vector of the step's epoch (:func:`mamlpp_importance`,
    annealed ``multi_step_loss`` before epoch ``msl_epochs``) or the last step alone;
    first order before epoch ``first_order_epochs`` (derivative-order annealing) or with
    ``first_order``. The loss is the query loss after the last step, as the learner logs.

    Args:
      apply_fn: ``apply_fn(params, x)`` of the network (one copy of each leaf).
      inner_lr, inner_steps, first_order, multi_step_loss, msl_epochs, msl_weights,
        first_order_epochs, per_step_bn, lslr, epoch_steps: as for
        :func:`mamlx.algorithms.mamlpp`.
      is_norm: ``is_norm(key_path)`` for the normalization leaves (a key naming a norm).

    Returns:
      ``reference(meta_params, batch, key=None, step=None)`` on meta-parameters
      ``{"params": θ[, "lr": rates]}`` (normalization leaves with K + 1 copies with
      ``per_step_bn``, a ``(K,)`` rate per array with ``lslr``); ``step`` is the training
      step (``None``: the end of training, as the learner's).
    """
    k_steps = inner_steps

    def weights(step) -> np.ndarray:
        if msl_weights is not None:
            return np.asarray(msl_weights, np.float64)
        if multi_step_loss and msl_epochs and step is not None:
            epoch = math.floor(step / epoch_steps)
            if epoch < msl_epochs:
                return mamlpp_importance(epoch, k_steps, msl_epochs)
        return np.eye(k_steps)[-1]

    def reference(meta_params: Params, batch, key=None, step=None):
        del key
        params = meta_params["params"]
        norm = jax.tree_util.tree_map_with_path(
            lambda path, _: bool(per_step_bn and is_norm(path)), params
        )
        nets = [  # the network's parameters at step k (θ's leaves as given, copy k)
            jax.tree.map(lambda n, a, k=k: a[k] if n else a, norm, params)
            for k in range(k_steps + 1)
        ]
        fl, _ = _flat_loss(apply_fn, nets[0])
        flat = [ravel_pytree(net)[0] for net in nets]
        on = ravel_pytree(
            jax.tree.map(lambda n, a: jnp.full_like(a, 0.0 if n else 1.0), norm, nets[0])
        )[0]
        if lslr:
            per_leaf = [
                jax.tree.map(lambda a, r, k=k: jnp.full_like(a, r[k]), nets[0], meta_params["lr"])
                for k in range(k_steps)
            ]
            rates = [on * ravel_pytree(t)[0] for t in per_leaf]
        else:
            rates = [on * inner_lr] * k_steps
        w = weights(step)
        first = first_order or (step is not None and step < first_order_epochs * epoch_steps)
        losses, d_params, d_rates = [], [], []
        for ep in tasks(batch):
            z, g = [flat[0]], []
            for k in range(k_steps):  # forward, storing every iterate
                g.append(fl.grad(z[k], ep.support_x, ep.support_y))
                z.append(on * (z[k] - rates[k] * g[k]) + (1 - on) * flat[k + 1])
            v, d_copy, d_rate = jnp.zeros_like(on), [jnp.zeros_like(on)] * (k_steps + 1), []
            for k in range(k_steps, 0, -1):
                q = w[k - 1] * fl.grad(z[k], ep.query_x, ep.query_y)
                v, d_copy[k] = v + on * q, d_copy[k] + (1 - on) * q
                d_rate.insert(0, -v * g[k - 1])
                if not first:
                    h = fl.hvp(z[k - 1], rates[k - 1] * v, ep.support_x, ep.support_y)
                    v, d_copy[k - 1] = v - on * h, d_copy[k - 1] - (1 - on) * h
            losses.append(fl.loss(z[-1], ep.query_x, ep.query_y))
            copies = [fl.unravel(d) for d in d_copy]
            d_params.append(
                jax.tree.map(
                    lambda n, a, *c: jnp.stack(c) if n else a, norm, fl.unravel(v), *copies
                )
            )
            rate_trees = [fl.unravel(d) for d in d_rate]
            d_rates.append(jax.tree.map(lambda *r: jnp.stack([jnp.sum(x) for x in r]), *rate_trees))
        grads = {"params": jax.tree.map(lambda *a: _mean(list(a)), *d_params)}
        if lslr:
            grads["lr"] = jax.tree.map(lambda *a: _mean(list(a)), *d_rates)
        return _mean(losses), grads

    return reference


def imaml_reference(
    apply_fn: Callable, *, inner_lr: float, inner_steps: int, lam: float
) -> Reference:
    """Implicit MAML (Rajeswaran et al. 2019): K SGD steps on L_s(θ) + λ/2 ‖θ − φ‖² from φ,
    then (I + H_s(θ_K)/λ)^{-1} ∇L_q(θ_K) by a dense solve (H by forward-over-reverse).

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs``.
      inner_lr: inner SGD step size.
      inner_steps: inner steps K.
      lam: the proximal regularisation λ.

    Returns:
      A reference; the learner agrees when its conjugate gradients converge
      (``cg_steps`` at least the number of parameters on a tiny problem).
    """

    def reference(params: Params, batch, key=None):
        del key
        fl, flat = _flat_loss(apply_fn, params)
        phi = np.asarray(flat)
        losses, grads = [], []
        for ep in tasks(batch):
            theta = phi
            for _ in range(inner_steps):
                g = np.asarray(fl.grad(theta, ep.support_x, ep.support_y))
                theta = theta - inner_lr * (g + lam * (theta - phi))
            h = np.asarray(fl.hessian(theta, ep.support_x, ep.support_y))
            g_query = np.asarray(fl.grad(theta, ep.query_x, ep.query_y))
            grads.append(np.linalg.solve(np.eye(phi.size) + h / lam, g_query))
            losses.append(fl.loss(theta, ep.query_x, ep.query_y))
        return _mean(losses), fl.unravel(jnp.asarray(_mean(grads)))

    return reference


def reptile_reference(
    apply_fn: Callable,
    *,
    inner_lr: float,
    inner_steps: int,
    adam: bool = False,
    b1: float = 0.0,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> Reference:
    """Reptile (Nichol et al. 2018): the pseudo-gradient φ − mean_i θ̃_i by a NumPy loop.

    θ̃ is ``inner_steps`` of SGD at ``inner_lr`` from φ on the support loss, or of Adam
    (m ← β₁m + (1−β₁)g, s ← β₂s + (1−β₂)g², θ ← θ − lr m̂/(√ŝ + ε) with bias-corrected
    m̂, ŝ; the paper's β₁ = 0), re-initialised per task.

    Returns:
      ``reference(params, batch, key=None) -> (mean query loss at θ̃, φ − mean θ̃)``.
    """

    def reference(params: Params, batch, key=None):
        del key
        fl, flat = _flat_loss(apply_fn, params)
        phi = np.asarray(flat)
        losses, adapted = [], []
        for ep in tasks(batch):
            theta, m, s = phi.copy(), np.zeros_like(phi), np.zeros_like(phi)
            for t in range(1, inner_steps + 1):
                g = np.asarray(fl.grad(theta, ep.support_x, ep.support_y))
                if adam:
                    m = b1 * m + (1 - b1) * g
                    s = b2 * s + (1 - b2) * g * g
                    m_hat, s_hat = m / (1 - b1**t), s / (1 - b2**t)
                    theta = theta - inner_lr * m_hat / (np.sqrt(s_hat) + eps)
                else:
                    theta = theta - inner_lr * g
            adapted.append(theta)
            losses.append(fl.loss(theta, ep.query_x, ep.query_y))
        return _mean(losses), fl.unravel(jnp.asarray(phi - _mean(adapted)))

    return reference


def pretrain_reference(apply_fn: Callable) -> Reference:
    """The pre-training baseline: the loss at φ itself on the support and query sets together."""

    def reference(params: Params, batch, key=None):
        del key
        fl, flat = _flat_loss(apply_fn, params)
        losses, grads = [], []
        for ep in tasks(batch):
            x = jnp.concatenate([ep.support_x, ep.query_x])
            y = jnp.concatenate([ep.support_y, ep.query_y])
            losses.append(fl.loss(flat, x, y))
            grads.append(fl.grad(flat, x, y))
        return _mean(losses), fl.unravel(_mean(grads))

    return reference


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _preprocess(x, p: float):
    """Andrychowicz et al.'s (2016) log/sign preprocessing, ``x.shape + (2,)``."""
    x = np.asarray(x, np.float64)
    big = np.abs(x) >= np.exp(-p)
    first = np.where(big, np.log(np.where(big, np.abs(x), 1.0)) / p, -1.0)
    return np.stack([first, np.where(big, np.sign(x), np.exp(p) * x)], axis=-1)


def meta_lstm_trajectory_numpy(lstm: dict, theta, loss_grad, steps: int, p: float = 10.0):
    """Ravi & Larochelle's (2017) update rule in NumPy on a flat parameter vector.

    ``c_t = f_t ⊙ θ_{t−1} − i_t ⊙ ∇_t`` with the gates ``σ(W·[h_t, θ_{t−1}, gate_{t−1}] + b)``
    and ``h_t`` from a coordinatewise LSTM reading ``[pre(L_t), pre(∇_t)]``.

    Args:
      lstm: meta-LSTM parameters ``{"lstm": [{"w", "b"}], "input_gate", "forget_gate"}``.
      theta: θ_0 as a flat vector.
      loss_grad: ``loss_grad(t, θ) -> (L_t, ∇_t)``, the values the LSTM reads at step t.
      steps: updates T.
      p: preprocessing parameter.

    Returns:
      ``(θ_T, [(L_t, ∇_t), ...])``.
    """
    w, b = (np.asarray(lstm["lstm"][0][k], np.float64) for k in ("w", "b"))
    gate_w = {k: np.asarray(lstm[k]["w"], np.float64) for k in ("input_gate", "forget_gate")}
    gate_b = {k: float(lstm[k]["b"]) for k in ("input_gate", "forget_gate")}
    hidden, theta = b.size // 4, np.asarray(theta, np.float64)
    h = c = np.zeros((theta.size, hidden))
    prev = {"input_gate": np.zeros(theta.size), "forget_gate": np.zeros(theta.size)}
    seen = []
    for t in range(steps):
        loss, g = loss_grad(t, theta)
        seen.append((loss, g))
        x = np.concatenate(
            [np.broadcast_to(_preprocess(loss, p), (theta.size, 2)), _preprocess(g, p)], 1
        )
        zi, zf, zg, zo = np.split(np.concatenate([x, h], 1) @ w + b, 4, axis=1)
        c = _sigmoid(zf) * c + _sigmoid(zi) * np.tanh(zg)
        h = _sigmoid(zo) * np.tanh(c)
        for k, gw in gate_w.items():
            prev[k] = _sigmoid(
                h @ gw[:hidden] + gw[hidden] * theta + gw[hidden + 1] * prev[k] + gate_b[k]
            )
        theta = prev["forget_gate"] * theta - prev["input_gate"] * np.asarray(g, np.float64)
    return theta, seen


def _numpy_unravel(tree) -> tuple[np.ndarray, Callable]:
    """``ravel_pytree`` in NumPy (the same order): the flat vector and its inverse."""
    leaves, treedef = jax.tree.flatten(tree)
    shapes = [np.shape(a) for a in leaves]
    ends = np.cumsum([int(np.prod(s)) for s in shapes])

    def unravel(flat):
        parts = np.split(np.asarray(flat, np.float64), ends[:-1])
        return jax.tree.unflatten(
            treedef, [a.reshape(s) for a, s in zip(parts, shapes, strict=True)]
        )

    return np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in leaves]), unravel


def meta_lstm_reference(
    apply_fn: Callable,
    *,
    inner_steps: int,
    second_order: bool = False,
    p: float = 10.0,
    fd_step: float = 1e-3,
) -> Reference:
    """The meta-learner LSTM (Ravi & Larochelle 2017) in NumPy, differentiated by finite
    differences over every meta-parameter (the five-point stencil, error O(h⁴)).

    First order (the paper): the support loss and gradient the LSTM reads are recorded once
    at the given meta-parameters and held fixed under the perturbations; ``second_order``
    recomputes them at every perturbed trajectory.

    Args:
      apply_fn: the learner network's ``apply_fn``.
      inner_steps: updates T.
      second_order: see above.
      p: preprocessing parameter.
      fd_step: finite-difference step h (float64).

    Returns:
      A reference on meta-parameters ``{"init": c_0, "lstm": ...}``.
    """

    def reference(meta_params: Params, batch, key=None):
        del key
        fl = _flat_loss(apply_fn, meta_params["init"])[0]
        flat, unravel = _numpy_unravel(meta_params)
        losses, grads = [], []
        for ep in tasks(batch):

            def support(t, theta, ep=ep):
                args = (jnp.asarray(theta), ep.support_x, ep.support_y)
                return float(fl.loss(*args)), np.asarray(fl.grad(*args))

            theta0 = _numpy_unravel(meta_params["init"])[0]
            frozen = meta_lstm_trajectory_numpy(
                meta_params["lstm"], theta0, support, inner_steps, p
            )[1]

            def query_loss(f, ep=ep, frozen=frozen):
                mp = unravel(f)
                read = support if second_order else (lambda t, theta: frozen[t])
                theta0 = _numpy_unravel(mp["init"])[0]
                theta = meta_lstm_trajectory_numpy(mp["lstm"], theta0, read, inner_steps, p)[0]
                return float(fl.loss(jnp.asarray(theta), ep.query_x, ep.query_y))

            losses.append(query_loss(flat))
            g = np.zeros_like(flat)
            for j in range(flat.size):
                e = np.zeros_like(flat)
                e[j] = fd_step
                g[j] = (
                    8 * (query_loss(flat + e) - query_loss(flat - e))
                    - (query_loss(flat + 2 * e) - query_loss(flat - 2 * e))
                ) / (12 * fd_step)
            grads.append(g)
        return _mean(losses), jax.tree.map(jnp.asarray, unravel(_mean(grads)))

    return reference
