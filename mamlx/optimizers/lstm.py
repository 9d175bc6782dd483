"""Coordinatewise LSTM optimizer as an optax transformation.

Andrychowicz, Denil, Gomez, Hoffman, Pfau, Schaul, Shillingford, de Freitas (2016),
"Learning to learn by gradient descent by gradient descent", NeurIPS.

One small LSTM (two layers of 20 units) is shared by every coordinate of the
optimizee; each coordinate keeps its own hidden and cell state. The LSTM reads the
preprocessed gradient of its coordinate and emits that coordinate's update:

    x_t = preprocess(∇_t),   (h_t, c_t) = LSTM(x_t, h_{t-1}, c_{t-1}),
    θ_{t+1} = θ_t + s · (W_out h_t + b_out) [+ k · ∇_t]

with output scale ``s`` (0.1) and an optional linear skip term ``k · ∇_t`` (absent in
the paper's parameters from :func:`init_lstm_optimizer`; present in
:func:`lstm_optimizer_params_sgd`, where it makes plain SGD exactly representable).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mamlx.sharding import varying_like
from mamlx.types import Array, Params, PRNGKey

MetaParams = dict  # {"lstm": [ {"w", "b"} per layer ], "out": {"w", "b"}, optional "skip"}


def preprocess_gradient(x: Array, p: float = 10.0) -> Array:
    """Log-magnitude / sign preprocessing of Andrychowicz et al. (2016), appendix A.

    ``x -> (log|x| / p, sign(x))`` if ``|x| >= e^{-p}``, else ``(-1, e^{p} x)``.

    Safe under differentiation: no ``log(0)`` is evaluated on either branch.

    Args:
      x: array of any shape (gradients, or a loss broadcast to coordinates).
      p: the scale parameter ``p > 0`` (10 in the paper).

    Returns:
      Array of shape ``x.shape + (2,)``.

    Example:
      >>> preprocess_gradient(jnp.array([1.0, 0.0])).shape
      (2, 2)
    """
    big = jnp.abs(x) >= math.exp(-p)
    safe = jnp.where(big, jnp.abs(x), jnp.ones_like(x))
    first = jnp.where(big, jnp.log(safe) / p, -jnp.ones_like(x))
    second = jnp.where(big, jnp.sign(x), math.exp(p) * x)
    return jnp.stack([first, second], axis=-1)


def lstm_cell(layer: dict, x: Array, h: Array, c: Array) -> tuple[Array, Array]:
    """One standard LSTM cell step over a batch of coordinates.

    ``[i, f, g, o] = [x, h] W + b``; ``c' = σ(f) c + σ(i) tanh(g)``; ``h' = σ(o) tanh(c')``.

    Args:
      layer: ``{"w": (in + H, 4H), "b": (4H,)}``.
      x: inputs ``(N, in)``; h, c: states ``(N, H)``.

    Returns:
      ``(h', c')``, each ``(N, H)``.
    """
    z = jnp.concatenate([x, h], axis=-1) @ layer["w"] + layer["b"]
    i, f, g, o = jnp.split(z, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return h, c


def init_lstm_layers(key: PRNGKey, sizes: list[int], hidden: int) -> list[dict]:
    """Uniform(±1/sqrt(H)) init of stacked LSTM layers, forget-gate bias 1."""
    layers = []
    for k, n_in in zip(jax.random.split(key, len(sizes)), sizes, strict=True):
        bound = 1.0 / math.sqrt(hidden)
        w = jax.random.uniform(k, (n_in + hidden, 4 * hidden), minval=-bound, maxval=bound)
        b = jnp.zeros((4 * hidden,)).at[hidden : 2 * hidden].set(1.0)
        layers.append({"w": w, "b": b})
    return layers


def init_lstm_optimizer(
    key: PRNGKey, hidden_size: int = 20, num_layers: int = 2, num_inputs: int = 2
) -> MetaParams:
    """Random meta-parameters of the coordinatewise LSTM optimizer (paper: 2 x 20).

    Args:
      key: PRNG key.
      hidden_size: LSTM units per layer (20 in the paper).
      num_layers: stacked LSTM layers (2 in the paper).
      num_inputs: features per coordinate after preprocessing (2).

    Returns:
      A plain dict pytree ``{"lstm": [{"w", "b"}, ...], "out": {"w", "b"}}``.

    Example:
      >>> mp = init_lstm_optimizer(jax.random.key(0))
      >>> mp["lstm"][0]["w"].shape
      (22, 80)
    """
    k_lstm, k_out = jax.random.split(key)
    sizes = [num_inputs] + [hidden_size] * (num_layers - 1)
    out_w = 0.1 * jax.random.normal(k_out, (hidden_size, 1)) / math.sqrt(hidden_size)
    return {
        "lstm": init_lstm_layers(k_lstm, sizes, hidden_size),
        "out": {"w": out_w, "b": jnp.zeros(())},
    }


def lstm_optimizer_params_sgd(
    lr: float, hidden_size: int = 20, num_layers: int = 2, num_inputs: int = 2
) -> MetaParams:
    """Meta-parameters with which the LSTM optimizer is exactly SGD with rate ``lr``.

    All LSTM and head weights are zero (so the head emits 0 and the hidden states
    stay 0) and the skip coefficient is ``k = -lr``, giving ``Δθ = -lr · ∇``. Useful
    as a test oracle and as a warm start for meta-training.

    Args:
      lr: SGD learning rate.
      hidden_size, num_layers, num_inputs: architecture, as in :func:`init_lstm_optimizer`.

    Returns:
      Meta-parameters with an extra ``"skip"`` scalar.

    Example:
      >>> opt = lstm_optimizer(lstm_optimizer_params_sgd(0.1))
    """
    mp = init_lstm_optimizer(jax.random.key(0), hidden_size, num_layers, num_inputs)
    mp = jax.tree.map(jnp.zeros_like, mp)
    # The default float (float64 where x64 is on: exactly SGD for float64 params), never int.
    mp["skip"] = jnp.asarray(-lr, dtype=jnp.result_type(float))
    return mp


class LSTMOptimizerState(NamedTuple):
    """Per-coordinate LSTM state.

    Attributes:
      h: pytree shaped like params; each leaf ``(num_layers, *leaf.shape, hidden)``.
      c: same structure as ``h`` (cell states).
    """

    h: Params
    c: Params


def _run_layers(layers: list[dict], x: Array, h: Array, c: Array) -> tuple[Array, Array, Array]:
    """Run stacked layers on ``x (N, in)`` with states ``(L, N, H)``; return top h and states."""
    hs, cs = [], []
    inp = x
    for layer_idx, layer in enumerate(layers):
        hi, ci = lstm_cell(layer, inp, h[layer_idx], c[layer_idx])
        hs.append(hi)
        cs.append(ci)
        inp = hi
    return inp, jnp.stack(hs), jnp.stack(cs)


def lstm_optimizer(
    meta_params: MetaParams, output_scale: float = 0.1, p: float = 10.0
) -> optax.GradientTransformation:
    """Coordinatewise LSTM optimizer (Andrychowicz et al., 2016) as an optax transform.

    Update per coordinate: ``x = preprocess(∇)``, ``(h, c) = LSTM(x, h, c)``,
    ``Δθ = output_scale · (W_out h + b_out) + skip · ∇`` (``skip`` only if present).
    The transformation closes over ``meta_params``; build it inside a traced
    function to differentiate the optimizee's trajectory w.r.t. ``meta_params``.
    Works under ``jit``/``vmap`` and inside ``optax.chain``; the returned updates are
    to be *added* (``optax.apply_updates``), like any optax optimizer.

    Args:
      meta_params: from :func:`init_lstm_optimizer` or :func:`lstm_optimizer_params_sgd`.
      output_scale: multiplies the LSTM head's output (0.1 in the paper).
      p: gradient-preprocessing parameter (10 in the paper).

    Returns:
      An ``optax.GradientTransformation`` whose state is :class:`LSTMOptimizerState`.

    Example:
      >>> opt = lstm_optimizer(init_lstm_optimizer(jax.random.key(0)))
      >>> params = {"w": jnp.ones(3)}
      >>> state = opt.init(params)
      >>> updates, state = opt.update({"w": jnp.ones(3)}, state, params)
    """
    layers = meta_params["lstm"]
    num_layers = len(layers)
    hidden = layers[0]["b"].shape[-1] // 4

    def init_fn(params: Params) -> LSTMOptimizerState:
        zeros = jax.tree.map(
            lambda x: jnp.zeros((num_layers, *jnp.shape(x), hidden), jnp.result_type(x)), params
        )
        # Per-device state when the params are per-device (task batches under shard_map).
        zeros = varying_like(zeros, params)
        return LSTMOptimizerState(h=zeros, c=zeros)

    def leaf_update(g: Array, h: Array, c: Array) -> tuple[Array, Array, Array]:
        shape = jnp.shape(g)
        n = math.prod(shape)
        x = preprocess_gradient(jnp.reshape(g, (n,)), p)
        top, h_new, c_new = _run_layers(
            layers,
            x,
            jnp.reshape(h, (num_layers, n, hidden)),
            jnp.reshape(c, (num_layers, n, hidden)),
        )
        out = top @ meta_params["out"]["w"][:, 0] + meta_params["out"]["b"]
        upd = output_scale * out
        if "skip" in meta_params:
            upd = upd + meta_params["skip"] * jnp.reshape(g, (n,))
        upd = jnp.reshape(upd, shape).astype(jnp.result_type(g))
        h_new = jnp.reshape(h_new, h.shape).astype(h.dtype)
        return upd, h_new, jnp.reshape(c_new, c.shape).astype(c.dtype)

    def update_fn(updates, state, params=None):
        del params
        leaves, treedef = jax.tree.flatten(updates)
        h_leaves = treedef.flatten_up_to(state.h)
        c_leaves = treedef.flatten_up_to(state.c)
        outs = [leaf_update(g, h, c) for g, h, c in zip(leaves, h_leaves, c_leaves, strict=True)]
        new_updates = treedef.unflatten([o[0] for o in outs])
        new_h = treedef.unflatten([o[1] for o in outs])
        new_c = treedef.unflatten([o[2] for o in outs])
        return new_updates, LSTMOptimizerState(h=new_h, c=new_c)

    return optax.GradientTransformation(init_fn, update_fn)
