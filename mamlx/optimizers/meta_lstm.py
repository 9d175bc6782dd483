"""Ravi & Larochelle's meta-learner LSTM update rule as an optax transformation.

Ravi & Larochelle (2017), "Optimization as a model for few-shot learning", ICLR.

The learner's parameters are the cell state of an LSTM-like update:

    c_t = f_t ⊙ c_{t-1} − i_t ⊙ ∇_t,                    (θ_t = c_t)
    i_t = σ(W_I · [h_t, θ_{t-1}, i_{t-1}] + b_I),
    f_t = σ(W_F · [h_t, θ_{t-1}, f_{t-1}] + b_F),

where ``h_t`` is the hidden state of a first-layer coordinatewise LSTM reading the
preprocessed gradient and loss ``[pre(L_t), pre(∇_t)]`` (Andrychowicz et al.'s
log/sign preprocessing). All weights are shared across coordinates, so the rule is
model-agnostic: it applies to any params pytree. With ``f = 1`` and ``i = η`` it is
SGD. The learned initial parameters ``c_0`` of the paper are held by the caller
(meta-train them jointly with the meta-parameters returned here).

The update needs the loss value: call ``update(grads, state, params, value=loss)``
(optax's extra-args convention, as in ``optax.scale_by_zoom_linesearch``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mamlx import inner
from mamlx.optimizers.lstm import init_lstm_layers, lstm_cell, preprocess_gradient
from mamlx.sharding import varying_like
from mamlx.types import Array, Params, PRNGKey


class MetaLSTMState(NamedTuple):
    """Per-coordinate state of the meta-learner LSTM.

    Attributes:
      h, c: first-layer LSTM states; each leaf ``(*leaf.shape, hidden)``.
      input_gate, forget_gate: the last gates ``i_{t-1}``, ``f_{t-1}``; shaped like params.
    """

    h: Params
    c: Params
    input_gate: Params
    forget_gate: Params


def init_meta_lstm(key: PRNGKey, hidden_size: int = 20) -> dict:
    """Meta-parameters of the meta-learner LSTM, initialised as in the paper's code.

    ``W_I, W_F ~ U(-0.01, 0.01)``, ``b_F ~ U(4, 6)`` (forget gate near 1) and
    ``b_I ~ U(-5, -4)`` (small input gate / learning rate).

    Args:
      key: PRNG key.
      hidden_size: units of the first-layer LSTM (20 in the paper).

    Returns:
      ``{"lstm": [{"w", "b"}], "input_gate": {"w", "b"}, "forget_gate": {"w", "b"}}``;
      gate weights have shape ``(hidden_size + 2,)`` for ``[h, θ, gate_prev]``.

    Example:
      >>> mp = init_meta_lstm(jax.random.key(0))
      >>> mp["input_gate"]["w"].shape
      (22,)
    """
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    n = hidden_size + 2
    return {
        "lstm": init_lstm_layers(k1, [4], hidden_size),
        "input_gate": {
            "w": jax.random.uniform(k2, (n,), minval=-0.01, maxval=0.01),
            "b": jax.random.uniform(k3, (), minval=-5.0, maxval=-4.0),
        },
        "forget_gate": {
            "w": jax.random.uniform(k4, (n,), minval=-0.01, maxval=0.01),
            "b": jax.random.uniform(k5, (), minval=4.0, maxval=6.0),
        },
    }


def meta_lstm_params_sgd(lr: float, hidden_size: int = 20) -> dict:
    """Meta-parameters for which the rule is SGD: ``f_t = 1``, ``i_t = σ(logit(lr)) ≈ lr``.

    All weights zero, ``b_F = 40`` (``σ(40)`` rounds to exactly 1 in float32 and
    float64) and ``b_I = log(lr / (1 − lr))``.

    Args:
      lr: learning rate in (0, 1).
      hidden_size: first-layer LSTM units.

    Returns:
      Meta-parameters as from :func:`init_meta_lstm`.

    Example:
      >>> mp = meta_lstm_params_sgd(0.1)
    """
    mp = jax.tree.map(jnp.zeros_like, init_meta_lstm(jax.random.key(0), hidden_size))
    dt = mp["forget_gate"]["b"].dtype
    mp["forget_gate"]["b"] = jnp.asarray(40.0, dt)
    mp["input_gate"]["b"] = jnp.asarray(math.log(lr / (1.0 - lr)), dt)
    return mp


def _gate(gp: dict, h: Array, theta: Array, prev: Array) -> Array:
    hidden = h.shape[-1]
    z = h @ gp["w"][:hidden] + gp["w"][hidden] * theta + gp["w"][hidden + 1] * prev
    return jax.nn.sigmoid(z + gp["b"])


def meta_lstm_optimizer(
    meta_params: dict, p: float = 10.0
) -> optax.GradientTransformationExtraArgs:
    """Ravi–Larochelle meta-learner LSTM as an optax transformation needing ``value=loss``.

    ``updates = c_t − θ_{t−1} = (f_t − 1) ⊙ θ_{t−1} − i_t ⊙ ∇_t``, so that
    ``optax.apply_updates(params, updates)`` gives the new cell state ``c_t``.
    Differentiable w.r.t. ``meta_params``; the paper drops the second-order term by
    treating ``∇_t`` and ``L_t`` as constants — apply ``lax.stop_gradient`` to them
    before calling ``update`` to reproduce that.

    Args:
      meta_params: from :func:`init_meta_lstm` or :func:`meta_lstm_params_sgd`.
      p: preprocessing parameter for gradient and loss (10 in the paper).

    Returns:
      ``optax.GradientTransformationExtraArgs`` with
      ``update(grads, state, params, *, value)``; ``params`` is required.

    Example:
      >>> opt = meta_lstm_optimizer(init_meta_lstm(jax.random.key(0)))
      >>> params = {"w": jnp.ones(3)}
      >>> state = opt.init(params)
      >>> upd, state = opt.update({"w": jnp.ones(3)}, state, params, value=jnp.array(2.0))
    """
    layer = meta_params["lstm"][0]
    hidden = layer["b"].shape[-1] // 4

    def init_fn(params: Params) -> MetaLSTMState:
        z = jax.tree.map(lambda x: jnp.zeros((*jnp.shape(x), hidden), jnp.result_type(x)), params)
        g0 = jax.tree.map(jnp.zeros_like, params)
        # Per-device state when the params are per-device (task batches under shard_map).
        z, g0 = varying_like((z, g0), params)
        return MetaLSTMState(h=z, c=z, input_gate=g0, forget_gate=g0)

    def leaf(g, theta, h, c, i_prev, f_prev, loss_feat):
        shape = jnp.shape(g)
        n = math.prod(shape)
        x = jnp.concatenate(
            [jnp.broadcast_to(loss_feat, (n, 2)), preprocess_gradient(jnp.reshape(g, (n,)), p)],
            axis=-1,
        )
        h_new, c_new = lstm_cell(
            layer, x.astype(h.dtype), jnp.reshape(h, (n, hidden)), jnp.reshape(c, (n, hidden))
        )
        th = jnp.reshape(theta, (n,))
        i = _gate(meta_params["input_gate"], h_new, th, jnp.reshape(i_prev, (n,)))
        f = _gate(meta_params["forget_gate"], h_new, th, jnp.reshape(f_prev, (n,)))
        upd = (f - 1.0) * th - i * jnp.reshape(g, (n,))
        dt = jnp.result_type(g)
        return (
            jnp.reshape(upd, shape).astype(dt),
            jnp.reshape(h_new, h.shape).astype(h.dtype),
            jnp.reshape(c_new, c.shape).astype(c.dtype),
            jnp.reshape(i, shape).astype(dt),
            jnp.reshape(f, shape).astype(dt),
        )

    def update_fn(updates, state, params=None, *, value=None, **extra_args):
        del extra_args
        if params is None or value is None:
            raise ValueError("meta_lstm_optimizer.update needs params and value=loss")
        loss_feat = preprocess_gradient(jnp.asarray(value), p)
        leaves, treedef = jax.tree.flatten(updates)
        cols = [treedef.flatten_up_to(t) for t in (params, *state)]
        outs = [leaf(g, *rest, loss_feat) for g, *rest in zip(leaves, *cols, strict=True)]
        new = [treedef.unflatten([o[k] for o in outs]) for k in range(5)]
        return new[0], MetaLSTMState(*new[1:])

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def gate_values(state: MetaLSTMState) -> dict[str, Params]:
    """The gates of the last update: ``{"input": i_t, "forget": f_t}``, shaped like params.

    Args:
      state: the state returned by the last ``update``.

    Returns:
      Dict of two pytrees shaped like the learner's params.

    Example:
      >>> # after `upd, state = opt.update(g, state, params, value=loss)`:
      >>> # gates = gate_values(state)["input"]
    """
    return {"input": state.input_gate, "forget": state.forget_gate}


def meta_lstm_trajectory(
    meta_params: dict,
    loss_fn: Callable[[Params], Array],
    init_params: Params,
    num_steps: int,
    second_order: bool | None = None,
    remat: bool = False,
    unroll: int | bool = 1,
    *,
    first_order: bool | None = None,
) -> tuple[Params, dict[str, Array]]:
    """Run the meta-learner LSTM on ``loss_fn`` for ``num_steps`` steps (the one inner loop).

    ``θ_{t} = c_t`` as above, starting from ``c_0 = init_params`` (the learned
    initialisation, supplied by the caller). Used both to train (differentiate the
    final query loss w.r.t. ``meta_params`` and ``init_params``) and to plot gates.
    A wrapper over :func:`mamlx.inner.run` with :func:`meta_lstm_optimizer` and a
    ``trace`` hook reading :func:`gate_values` after each update.

    Args:
      meta_params: meta-learner parameters.
      loss_fn: ``params -> scalar`` learner loss (e.g. on the support set).
      init_params: learner initialisation ``c_0``.
      num_steps: number of updates.
      second_order: the negation of ``first_order`` (kept for existing callers);
        default ``False``.
      remat: ``jax.checkpoint`` each update (backward memory of one update).
      unroll: ``lax.scan``'s ``unroll`` (``True``: a straight-line program; on CPU
        about 1.5x faster to differentiate for a few updates, slower to compile).
      first_order: if True (the paper, and the default), ``∇_t`` and ``L_t`` fed to
        the LSTM are ``stop_gradient``-ed; give this or ``second_order``, not both
        disagreeing.

    Returns:
      ``(final_params, trace)`` with ``trace["loss"]`` of shape ``(num_steps,)`` (loss
      ``L(θ_{t−1})`` before each update, as :func:`mamlx.inner.run` records it) and
      ``trace["input"]``/``trace["forget"]`` pytrees with a leading ``num_steps`` axis
      (the gates ``i_t``, ``f_t`` of each update).

    Example:
      >>> loss_fn = lambda p: jnp.sum(p["w"] ** 2)
      >>> _, tr = meta_lstm_trajectory(meta_lstm_params_sgd(0.1), loss_fn, {"w": jnp.ones(2)}, 3)
      >>> tr["loss"].shape
      (3,)
    """
    out = inner.run(
        loss_fn,
        init_params,
        steps=num_steps,
        optimizer=meta_lstm_optimizer(meta_params),
        first_order=inner.first_order_flag(first_order, second_order, default_first_order=True),
        remat=remat,
        unroll=unroll,
        trace=lambda params, state: gate_values(state),
    )
    return out.params, {"loss": out.losses, **out.trace}
