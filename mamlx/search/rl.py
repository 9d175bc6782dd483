"""REINFORCE for the controller: moving-average baseline and entropy bonus.

Williams (1992), "Simple statistical gradient-following algorithms for connectionist
reinforcement learning", Machine Learning 8; as used to search update rules by Bello et
al. (2017) and activations by Ramachandran et al. (2017). With programs ``c_k ~ π_θ``,
their rewards ``R_k`` and a baseline ``b`` (a moving average of past rewards),

    ∇_θ J ≈ (1/K) Σ_k (R_k − b) ∇_θ log π_θ(c_k) + β ∇_θ (1/K) Σ_k H_k,

where ``H_k`` sums the per-slot entropies along ``c_k``. The baseline leaves the
estimate unbiased and lowers its variance; the entropy bonus ``β`` keeps the policy
exploring. Non-finite rewards (a diverged child run) are replaced by ``worst_reward``
before anything else, so an invalid program never puts NaN into the controller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mamlx.search.lstm_controller import Controller, Samples
from mamlx.types import Array, Metrics, Params, PRNGKey

__all__ = ["Reinforce", "SearchState", "make_search_step", "reinforce"]


class SearchState(NamedTuple):
    """State of a controller trained by REINFORCE.

    Attributes:
      params: the controller's parameters.
      opt_state: the optax state of its optimizer.
      baseline: moving average of the mean batch reward (scalar).
      count: controller updates done (int32 scalar).
    """

    params: Params
    opt_state: Any
    baseline: Array
    count: Array


class Reinforce(NamedTuple):
    """Pure functions of REINFORCE over a controller (see :func:`reinforce`).

    Attributes:
      controller: the :class:`~mamlx.search.Controller`.
      init: ``init(key) -> SearchState``.
      sample: ``sample(state, key, num) -> Samples`` (``num`` static under ``jit``).
      update: ``update(state, codes, rewards) -> (state, metrics)``.
      loss: ``loss(params, codes, rewards, baseline) -> scalar``, the surrogate whose
        negative gradient is the REINFORCE estimate (with the entropy bonus).
    """

    controller: Controller
    init: Callable[[PRNGKey], SearchState]
    sample: Callable[[SearchState, PRNGKey, int], Samples]
    update: Callable[[SearchState, Array, Array], tuple[SearchState, Metrics]]
    loss: Callable[[Params, Array, Array, Array], Array]


def reinforce(
    ctrl: Controller,
    optimizer: optax.GradientTransformation | None = None,
    *,
    entropy_weight: float = 1e-2,
    baseline_decay: float = 0.9,
    worst_reward: float = 0.0,
) -> Reinforce:
    """REINFORCE with a moving-average baseline and an entropy bonus (Williams 1992).

    Williams (1992), "Simple statistical gradient-following algorithms for connectionist
    reinforcement learning"; the controller setting of Zoph & Le (2017) and Bello et al.
    (2017). Surrogate loss (its gradient is minus the estimate in the module docstring):

        L(θ) = −(1/K) Σ_k (R_k − b) log π_θ(c_k) − β (1/K) Σ_k H_k(θ)

    The update uses the baseline from *before* the batch (on the first update, the
    batch's mean reward), then sets ``b ← d·b + (1 − d)·mean_k R_k``.

    Args:
      ctrl: from :func:`~mamlx.search.controller`.
      optimizer: optax transformation of the controller (default Adam, rate 5e-3).
      entropy_weight: ``β``.
      baseline_decay: ``d`` in ``[0, 1)``.
      worst_reward: what a non-finite reward is replaced by (the worst possible reward:
        0 for an accuracy).

    Returns:
      :class:`Reinforce`; ``update`` and ``sample`` are pure and jittable.

    Example:
      >>> from mamlx.search import SearchSpace, controller
      >>> space = SearchSpace("bandit", ("arm",), (("a", "b", "c"),), str)
      >>> search = reinforce(controller(space, hidden=8), optax.adam(0.1))
      >>> sample, update = jax.jit(search.sample, static_argnums=2), jax.jit(search.update)
      >>> state = search.init(jax.random.key(0))
      >>> for i in range(20):
      ...     codes = sample(state, jax.random.key(i), 16).codes
      ...     state, m = update(state, codes, (codes[:, 0] == 2).astype(float))
      >>> probs = jnp.exp(search.controller.log_prob(state.params, jnp.array([[2]]))[0])
      >>> bool(probs[0] > 0.8)
      True
    """
    if not 0.0 <= float(baseline_decay) < 1.0:
        raise ValueError(f"baseline_decay must be in [0, 1), got {baseline_decay!r}")
    opt = optax.adam(5e-3) if optimizer is None else optimizer

    def init(key: PRNGKey) -> SearchState:
        params = ctrl.init(key)
        return SearchState(params, opt.init(params), jnp.zeros(()), jnp.zeros((), jnp.int32))

    def sample(state: SearchState, key: PRNGKey, num: int) -> Samples:
        return ctrl.sample(state.params, key, num)

    def loss_and_entropy(params, codes, rewards, baseline):
        logp, entropy = ctrl.log_prob(params, codes)
        advantage = jax.lax.stop_gradient(rewards - baseline)
        mean_entropy = jnp.mean(entropy)
        return -jnp.mean(advantage * logp) - entropy_weight * mean_entropy, mean_entropy

    def loss(params: Params, codes: Array, rewards: Array, baseline: Array) -> Array:
        return loss_and_entropy(params, codes, rewards, baseline)[0]

    def update(state: SearchState, codes: Array, rewards: Array) -> tuple[SearchState, Metrics]:
        rewards = jnp.asarray(rewards, jnp.float32)
        finite = jnp.isfinite(rewards)
        rewards = jnp.where(finite, rewards, worst_reward)
        mean = jnp.mean(rewards)
        baseline = jnp.where(state.count == 0, mean, state.baseline)
        (value, entropy), grads = jax.value_and_grad(loss_and_entropy, has_aux=True)(
            state.params, codes, rewards, baseline
        )
        updates, opt_state = opt.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_baseline = baseline_decay * baseline + (1 - baseline_decay) * mean
        metrics = {
            "loss": value,
            "reward_mean": mean,
            "reward_max": jnp.max(rewards),
            "baseline": baseline,
            "entropy": entropy,
            "invalid_fraction": 1.0 - jnp.mean(finite.astype(jnp.float32)),
            "grad_norm": optax.tree.norm(grads),
        }
        return SearchState(params, opt_state, new_baseline, state.count + 1), metrics

    return Reinforce(ctrl, init, sample, update, loss)


def make_search_step(
    search: Reinforce, reward_fn: Callable[..., Array], num: int
) -> Callable[..., tuple[SearchState, Metrics, Array, Array]]:
    """One controller update as one compiled function: sample, evaluate, update.

    Args:
      search: from :func:`reinforce`.
      reward_fn: ``reward_fn(codes (num, L), key, *data) -> rewards (num,)``, jittable
        (e.g. :func:`~mamlx.search.rule_rewards`, which trains every program under
        ``vmap``; ``data`` is its task).
      num: programs per update (static).

    Returns:
      Jitted ``step(state, key, *data) -> (state, metrics, codes, rewards)``; ``data`` is
      passed on to ``reward_fn`` (an argument, not a compiled-in constant); ``rewards``
      as ``reward_fn`` gave them (before non-finite ones become the worst reward).

    Example:
      >>> from mamlx.search import SearchSpace, controller
      >>> space = SearchSpace("bandit", ("arm",), (("a", "b"),), str)
      >>> search = reinforce(controller(space, hidden=4))
      >>> step = make_search_step(search, lambda c, k: c[:, 0].astype(float), num=8)
      >>> state, metrics, codes, rewards = step(search.init(jax.random.key(0)), jax.random.key(1))
      >>> codes.shape, int(state.count)
      ((8, 1), 1)
    """

    @jax.jit
    def step(state: SearchState, key: PRNGKey, *data: Any):
        k_sample, k_reward = jax.random.split(key)
        codes = search.sample(state, k_sample, num).codes
        rewards = reward_fn(codes, k_reward, *data)
        state, metrics = search.update(state, codes, rewards)
        return state, metrics, codes, rewards

    return step
