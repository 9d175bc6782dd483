"""Meta-learner LSTM few-shot learner (Ravi & Larochelle, ICLR 2017).

"Optimization as a model for few-shot learning": the learner's parameters are the
cell state of an LSTM whose gates are meta-learned, and the cell state's initial
value is meta-learned too:

    θ_0 = c_0 (learned),   θ_t = c_t = f_t ⊙ θ_{t−1} − i_t ⊙ ∇_θ L_support(θ_{t−1}),

    min_{c_0, W}  Σ_i L_query(θ_T)     (T inner updates on the support set)

with input gate ``i_t`` (a learned, per-coordinate learning rate) and forget gate
``f_t`` (a learned shrinkage) computed from the preprocessed loss and gradient by
weights shared across all coordinates (:func:`mamlx.optimizers.meta_lstm_optimizer`).
As in the paper, the support loss and gradient fed to the LSTM are treated as
constants by default (no second derivatives of the learner's loss); with
``second_order=True`` the meta-gradient is exact. With ``i_t = α`` and ``f_t = 1``
the update is SGD and the learner is MAML.

Meta-parameters are ``{"init": c_0, "lstm": meta-learner LSTM parameters}``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import jax
from jax import lax

from mamlx import inner
from mamlx.algorithms.base import MetaLearner, check_task_map, gradient_learner, query_outer_loss
from mamlx.algorithms.gradient_based import make_predict, support_loss_fn
from mamlx.models.adapter import ApplyFn
from mamlx.optimizers.meta_lstm import init_meta_lstm, meta_lstm_trajectory
from mamlx.types import Params, PRNGKey


def _check_args(inner_steps, hidden_size, init_lr) -> None:
    if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 1:
        raise ValueError(
            f"meta_lstm needs inner_steps >= 1 (the LSTM must update the learner at least "
            f"once during meta-training), got {inner_steps!r}"
        )
    if isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or hidden_size < 1:
        raise ValueError(f"hidden_size must be a positive int, got {hidden_size!r}")
    if init_lr is not None and not (
        isinstance(init_lr, numbers.Real) and not isinstance(init_lr, bool) and 0 < init_lr < 1
    ):
        raise ValueError(
            f"init_lr is the initial input gate σ(b_I) and must lie in (0, 1), got {init_lr!r}"
        )


def meta_lstm(
    apply_fn: ApplyFn,
    init_fn: Callable[[PRNGKey], Params],
    *,
    inner_steps: int = 5,
    init_lr: float | None = None,
    hidden_size: int = 20,
    second_order: bool = False,
    remat: bool = False,
    unroll: bool = True,
    loss_fn: Callable | None = None,
    task_map: str = "vmap",
    transductive: bool = True,
) -> MetaLearner:
    """Ravi & Larochelle's meta-learner LSTM as a :class:`MetaLearner`.

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs`` of the learner (e.g. Conv-4).
      init_fn: ``init_fn(key) -> params``; gives the initial value of ``c_0``.
      inner_steps: LSTM updates on the support set during meta-training (the paper:
        5 for 5-shot, 12 for 1-shot); test-time updates via ``adapt(..., steps=)``.
      init_lr: if given, the input-gate bias starts at ``log(α / (1 − α))`` so that
        the first updates are close to SGD with rate ``α``; ``None`` keeps the paper's
        ``b_I ~ U(−5, −4)`` (α ≈ 0.007–0.018). The forget-gate bias starts in ``U(4, 6)``.
      hidden_size: units of the LSTM's first layer (20 in the paper).
      second_order: differentiate through the support loss and gradient fed to the
        LSTM (exact meta-gradient); ``False`` treats them as constants (the paper).
      remat: ``jax.checkpoint`` each inner update (backward memory of one update).
      unroll: unroll the inner loop into straight-line code (faster on CPU for a few
        updates; set False for many updates to keep compile time down).
      loss_fn: ``loss_fn(pred, y)``; default cross-entropy for integer labels, MSE otherwise.
      task_map: ``"vmap"``, ``"map"`` or ``"auto"`` over the task batch (:func:`~mamlx.algorithms.map_tasks`).
      transductive: batch-norm statistics from the whole query batch (the paper uses
        batch statistics at test time too); see :func:`mamlx.algorithms.gradient_based.make_predict`.

    Returns:
      A :class:`MetaLearner` over meta-parameters ``{"init", "lstm"}``.

    Example:
      >>> import jax
      >>> from mamlx.models import MLP, model
      >>> from mamlx.tasks import sinusoid
      >>> apply_fn, init_fn = model(lambda rngs: MLP((1, 8, 1), rngs=rngs))
      >>> learner = meta_lstm(apply_fn, init_fn, inner_steps=2, init_lr=0.01)
      >>> mp = learner.init(jax.random.PRNGKey(0))
      >>> sorted(mp)
      ['init', 'lstm']
      >>> tasks = sinusoid(5).sample_batch(jax.random.PRNGKey(1), None, 2)
      >>> grads, metrics = jax.jit(learner.meta_grad)(mp, tasks)
      >>> bool(metrics["loss"] > 0)
      True
    """
    _check_args(inner_steps, hidden_size, init_lr)
    check_task_map(task_map)

    def init(key: PRNGKey) -> Params:
        k_learner, k_lstm = jax.random.split(key)
        lstm = init_meta_lstm(k_lstm, hidden_size)
        if init_lr is not None:
            b = lstm["input_gate"]["b"]
            lstm["input_gate"]["b"] = jax.numpy.asarray(
                math.log(init_lr / (1.0 - init_lr)), b.dtype
            )
        return {"init": init_fn(k_learner), "lstm": lstm}

    support_loss = support_loss_fn(apply_fn, loss_fn)

    def adapt_params(meta_params, support_x, support_y, steps=None):
        steps = inner.check_steps(inner_steps if steps is None else steps)
        if steps == 0:
            return meta_params["init"]
        params, _ = meta_lstm_trajectory(
            meta_params["lstm"],
            lambda p: support_loss(p, support_x, support_y),
            meta_params["init"],
            steps,
            first_order=not second_order,  # the one inner-loop convention
            remat=remat,
            unroll=unroll,
        )
        return params

    adapt, predict = make_predict(apply_fn, adapt_params, transductive)
    outer_loss = query_outer_loss(adapt, predict, loss_fn)
    return gradient_learner(init, adapt, predict, outer_loss, task_map, loss_fn)


def meta_lstm_gate_trace(
    learner_apply_fn: ApplyFn,
    meta_params: Params,
    support_x: jax.Array,
    support_y: jax.Array,
    steps: int,
    loss_fn: Callable | None = None,
) -> dict:
    """Support loss and gate values over the inner updates of one task (for figures).

    Args:
      learner_apply_fn: the learner's ``apply_fn``.
      meta_params: trained ``{"init", "lstm"}`` meta-parameters.
      support_x: support inputs of one task.
      support_y: support labels of one task.
      steps: number of inner updates.
      loss_fn: the learner's loss (default by label dtype).

    Returns:
      ``{"loss": (steps,), "input": pytree (steps, ...), "forget": pytree (steps, ...)}``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from mamlx.models import MLP, model
      >>> apply_fn, init_fn = model(lambda rngs: MLP((1, 4, 1), rngs=rngs))
      >>> mp = meta_lstm(apply_fn, init_fn).init(jax.random.PRNGKey(0))
      >>> tr = meta_lstm_gate_trace(apply_fn, mp, jnp.ones((3, 1)), jnp.ones((3, 1)), 4)
      >>> tr["loss"].shape
      (4,)
    """
    support_loss = support_loss_fn(learner_apply_fn, loss_fn)
    _, trace = meta_lstm_trajectory(
        lax.stop_gradient(meta_params["lstm"]),
        lambda p: support_loss(p, support_x, support_y),
        meta_params["init"],
        inner.check_steps(steps),
    )
    return trace
