"""The controller: an LSTM that writes a program one token per slot.

Zoph & Le (2017), "Neural Architecture Search with Reinforcement Learning", ICLR, and
Bello et al. (2017), "Neural Optimizer Search with Reinforcement Learning", ICML: at
slot ``i`` the LSTM reads the embedding of the previous token (a learned start token at
``i = 0``), and a softmax over slot ``i``'s vocabulary gives the next token::

    (h_i, c_i) = LSTM(embed(t_{i-1}), h_{i-1}, c_{i-1}),   t_i ~ softmax(W h_i + b)[slot i]

The module is a Flax NNX module used through the functional API
(:func:`mamlx.models.functional`: ``nnx.split`` once, ``nnx.merge(copy=True)`` inside the
pure function); :func:`controller` returns pure, jittable ``init``, ``sample`` and
``log_prob`` functions over a plain-dict params pytree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mamlx.models.adapter import ApplyFn, functional
from mamlx.search.grammar import SearchSpace
from mamlx.types import Array, Params, PRNGKey

__all__ = ["Controller", "ControllerLSTM", "Samples", "controller"]


def abstract_model(
    make_module: Callable[[nnx.Rngs], nnx.Module],
) -> tuple[ApplyFn, Callable[[PRNGKey], Params]]:
    """:func:`mamlx.models.model` without computing anything at build time.

    The module is built abstractly (``nnx.eval_shape``) for its graph and parameter
    structure, and ``init_fn`` is compiled: no eager initializers (each a small compile
    of its own) when a pure function is built or traced.
    """
    apply_fn, _ = functional(nnx.eval_shape(lambda: make_module(nnx.Rngs(0))))
    init_fn = jax.jit(lambda key: functional(make_module(nnx.Rngs(key)))[1])
    return apply_fn, init_fn


class ControllerLSTM(nnx.Module):
    """One-layer LSTM policy over a fixed-length grammar.

    Calling it on a key samples one program; on a key and a code it scores that code
    (teacher forcing). Either way it returns ``(code, log_prob, entropy)`` where
    ``entropy`` is the sum over slots of the entropy of each slot's softmax given the
    tokens before it.

    Args:
      vocab_sizes: tokens per slot.
      hidden: LSTM width (and token embedding size).
      rngs: Flax RNG streams for initialization. The output layer starts at zero, so the
        first policy is uniform over every slot.

    Example:
      >>> net = ControllerLSTM((3, 2), hidden=8, rngs=nnx.Rngs(0))
      >>> code, logp, ent = net(jax.random.key(1))
      >>> code.shape, round(float(logp), 4), round(float(ent), 4)  # log(1/6), log 6
      ((2,), -1.7918, 1.7918)
    """

    def __init__(self, vocab_sizes: Sequence[int], hidden: int = 32, *, rngs: nnx.Rngs):
        sizes = tuple(int(v) for v in vocab_sizes)
        if not sizes or min(sizes) < 1 or int(hidden) < 1:
            raise ValueError(f"need >= 1 slot of >= 1 token and hidden >= 1, got {sizes}, {hidden}")
        self.vocab_sizes = sizes
        self.offsets = tuple(int(sum(sizes[:i])) for i in range(len(sizes)))
        total = sum(sizes)
        self.embed = nnx.Embed(total + 1, int(hidden), rngs=rngs)  # + the start token
        self.cell = nnx.OptimizedLSTMCell(
            int(hidden),
            int(hidden),
            recurrent_kernel_init=nnx.initializers.lecun_normal(),
            rngs=rngs,
        )
        self.head = nnx.Linear(
            int(hidden), total, kernel_init=nnx.initializers.zeros_init(), rngs=rngs
        )

    def __call__(self, key: PRNGKey, code: Array | None = None) -> tuple[Array, Array, Array]:
        sizes, n = self.vocab_sizes, len(self.vocab_sizes)
        total, hidden = sum(sizes), self.embed.embedding.shape[-1]
        offsets = jnp.asarray(self.offsets, jnp.int32)
        slot_of = jnp.asarray(np.repeat(np.arange(n), sizes))  # slot of each global token id
        if code is None:  # Gumbel-max sampling, all noise drawn at once (one RNG call)
            noise, forced = jax.random.gumbel(key, (n, total)), jnp.zeros((n,), jnp.int32)
        else:
            noise, forced = jnp.zeros((n, total)), jnp.asarray(code, jnp.int32)

        def slot(carry, inputs):  # one slot: a scan keeps the program the size of one step
            state, token = carry
            i, gumbel, given = inputs
            state, h = self.cell(state, self.embed(token))
            # this slot's tokens only: the others get a logit of -1e9 (probability 0)
            log_probs = jax.nn.log_softmax(jnp.where(slot_of == i, self.head(h), -1e9))
            t = jnp.argmax(log_probs + gumbel) if code is None else offsets[i] + given
            entropy = -jnp.sum(jnp.exp(log_probs) * log_probs)
            return (state, t), (t - offsets[i], log_probs[t], entropy)

        zeros = jnp.zeros((hidden,))
        start = jnp.asarray(total, jnp.int32)  # the start token
        _, (tokens, logp, entropy) = jax.lax.scan(
            slot, ((zeros, zeros), start), (jnp.arange(n), noise, forced)
        )
        return tokens.astype(jnp.int32), jnp.sum(logp), jnp.sum(entropy)


class Samples(NamedTuple):
    """A batch of programs drawn by the controller.

    Attributes:
      codes: int32 ``(num, length)``.
      log_prob: ``(num,)`` log-probability of each code under the policy.
      entropy: ``(num,)`` summed per-slot entropies along each code.
    """

    codes: Array
    log_prob: Array
    entropy: Array


class Controller(NamedTuple):
    """Pure functions of an LSTM controller over a grammar (see :func:`controller`).

    Attributes:
      space: the grammar.
      init: ``init(key) -> params`` (plain dict pytree).
      sample: ``sample(params, key, num) -> Samples`` (``num`` static under ``jit``).
      log_prob: ``log_prob(params, codes) -> (log_prob, entropy)``, each ``(num,)``.
    """

    space: SearchSpace
    init: Callable[[PRNGKey], Params]
    sample: Callable[[Params, PRNGKey, int], Samples]
    log_prob: Callable[[Params, Array], tuple[Array, Array]]


def controller(space: SearchSpace, hidden: int = 32) -> Controller:
    """An LSTM controller that writes programs of ``space`` (Zoph & Le 2017; Bello et al. 2017).

    Zoph & Le (2017), "Neural Architecture Search with Reinforcement Learning", ICLR;
    Bello et al. (2017), "Neural Optimizer Search with Reinforcement Learning", ICML.
    ``π(code) = Π_i softmax(W h_i + b)[slot i][t_i]``, ``h_i`` the LSTM state after the
    previous tokens.

    Args:
      space: the grammar (e.g. :data:`~mamlx.search.UPDATE_RULES`).
      hidden: LSTM width (Bello et al. used one layer of 150 units).

    Returns:
      :class:`Controller`; every function is pure and jittable.

    Example:
      >>> from mamlx.search import ACTIVATIONS
      >>> ctrl = controller(ACTIVATIONS, hidden=16)
      >>> params = ctrl.init(jax.random.key(0))
      >>> s = jax.jit(ctrl.sample, static_argnums=2)(params, jax.random.key(1), 4)
      >>> logp, entropy = jax.jit(ctrl.log_prob)(params, s.codes)
      >>> s.codes.shape, bool(jnp.allclose(logp, s.log_prob))
      ((4, 6), True)
    """
    sizes = space.vocab_sizes
    apply_fn, init_fn = abstract_model(lambda rngs: ControllerLSTM(sizes, hidden, rngs=rngs))

    def sample(params: Params, key: PRNGKey, num: int) -> Samples:
        keys = jax.random.split(key, num)
        return Samples(*jax.vmap(lambda k: apply_fn(params, k))(keys))

    def log_prob(params: Params, codes: Array) -> tuple[Array, Array]:
        key = jax.random.key(0)  # unused when a code is given
        _, logp, ent = jax.vmap(lambda c: apply_fn(params, key, c))(jnp.asarray(codes))
        return logp, ent

    return Controller(space, init_fn, sample, log_prob)
