"""The compiled meta-training loop.

One meta-training step — sample a task batch, map the learner over tasks, take
the meta-gradient, apply the optax update — is a single pure function. Many
steps run per host call inside ``lax.scan``, so Python is not in the hot loop;
the host only checks for non-finite losses, logs and writes checkpoints between
chunks.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

from mamlx import checkpoint, sharding
from mamlx._checks import check_count
from mamlx.algorithms.base import MetaLearner, call_with_key, learner_key, takes_arg, takes_key
from mamlx.tasks.base import Sampler
from mamlx.types import Metrics, Params, PRNGKey


class TrainState(NamedTuple):
    """Everything that determines the rest of a run: resuming from it is exact."""

    step: jax.Array
    params: Params
    opt_state: optax.OptState
    key: PRNGKey


class NonFiniteLossError(FloatingPointError):
    """Raised when the meta-loss (or the parameters) become NaN or infinite.

    The message names the step and the likely causes: class labels outside
    ``[0, ways)`` (not range-checked inside the compiled loop), a too-high
    learning rate, or non-finite inputs.
    """

    def __init__(self, step: int, checkpoint_path: Path | None = None):
        self.step = step
        self.checkpoint_path = checkpoint_path
        where = f"; last good state saved at {checkpoint_path}" if checkpoint_path else ""
        super().__init__(
            f"meta-loss became non-finite at step {step}{where}. Likely causes: integer "
            "class labels outside [0, ways) from the sampler or data (they make the "
            "cross-entropy NaN; labels are traced in the compiled loop, so the loss cannot "
            "name them: learner.outer_loss(params, episode) on one "
            "sampled episode, without jit, names bad labels), a learning rate too high "
            "(divergence), or NaN/inf in the inputs"
        )


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during :func:`fit`: the state after the last finished chunk is
    checkpointed first (when ``fit`` has a ``run_dir``), so the run resumes from there.

    Attributes:
      step: the step of that state.
      checkpoint_path: the checkpoint written, or ``None`` without a ``run_dir``.
      state: that :class:`TrainState`.
    """

    def __init__(self, step: int, checkpoint_path: Path | None, state: Any = None):
        self.step, self.checkpoint_path, self.state = step, checkpoint_path, state
        where = f"; checkpoint saved at {checkpoint_path}" if checkpoint_path else ""
        super().__init__(f"interrupted at step {step}{where}")


def init_state(learner: MetaLearner, optimizer: optax.GradientTransformation, key) -> TrainState:
    """Initial training state: fresh meta-parameters and optimizer state.

    Args:
      learner: any :class:`~mamlx.algorithms.MetaLearner`.
      optimizer: the outer (meta) optimizer.
      key: a ``jax.random.PRNGKey`` (uint32 array) or a typed ``jax.random.key``;
        the state holds its raw key data, which checkpoints store as plain arrays.

    Returns:
      A :class:`TrainState` at step 0.
    """
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    k_init, k_train = jax.random.split(key)
    # Strong types: a weak-typed leaf (from a Python scalar) would become strong after
    # the first update and make the compiled step trace and compile a second time.
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.result_type(x)), learner.init(k_init))
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), k_train)


def make_step(
    learner: MetaLearner,
    sampler: Sampler,
    optimizer: optax.GradientTransformation,
    meta_batch: int,
    mesh: Any = None,
) -> Callable[[TrainState, Any], tuple[TrainState, Metrics]]:
    """One pure meta-training step ``step(state, data) -> (state, metrics)``.

    The step samples ``meta_batch`` tasks with ``sampler.sample_batch(key, data,
    meta_batch)`` (a :class:`~mamlx.tasks.Sampler`), computes ``learner.meta_grad``
    and applies the optimizer: φ ← φ + optimizer(∇_φ Σ_i L_i(φ)). With a ``mesh`` (see
    :func:`mamlx.sharding.task_mesh`) the task batch is split over its devices and
    each device maps the learner over its own tasks (:func:`mamlx.sharding.sharded_meta_grad`).

    ``meta_grad`` gets ``key=learner_key(state.key)`` (:func:`mamlx.algorithms.learner_key`):
    fresh every step for stochastic learners (the hallucinator's noise), independent of
    the sampled tasks, which are those drawn without it. With a mesh, device ``d`` gets
    ``fold_in(that key, d)``. A ``meta_grad`` without a ``key`` parameter is called
    without one. A ``meta_grad`` with a ``step`` parameter also gets ``step=state.step``, the
    number of steps taken before this one (MAML++'s annealed multi-step loss and derivative
    order follow it).
    """
    meta_batch = check_count("meta_batch", meta_batch, low=1)
    if mesh is not None:
        sharding.check_divisible(meta_batch, mesh)
    keyed = takes_key(learner.meta_grad)
    stepped = takes_arg(learner.meta_grad, "step")

    def step(state: TrainState, data: Any) -> tuple[TrainState, Metrics]:
        key, k_tasks = jax.random.split(state.key)
        episodes = sampler.sample_batch(k_tasks, data, meta_batch)
        k_learner = learner_key(state.key) if keyed else None
        when = {"step": state.step} if stepped else {}
        if mesh is None:
            grads, metrics = call_with_key(
                learner.meta_grad, state.params, episodes, key=k_learner, **when
            )
        else:

            def device_meta_grad(params, episodes):  # inside shard_map: one key per device
                k = k_learner
                if k is not None:
                    k = jax.random.fold_in(k, jax.lax.axis_index(sharding.AXIS))
                return call_with_key(learner.meta_grad, params, episodes, key=k, **when)

            episodes = sharding.shard_tasks(episodes, mesh)
            grads, metrics = sharding.sharded_meta_grad(device_meta_grad, mesh)(
                state.params, episodes
            )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(state.step + 1, params, opt_state, key), metrics

    return step


def make_chunk(step: Callable, length: int) -> Callable:
    """``length`` steps fused into one compiled call with ``lax.scan``.

    Returns:
      ``chunk(state, data) -> (state, metrics)`` with metrics stacked over steps.
    """

    @jax.jit
    def chunk(state, data):
        return jax.lax.scan(lambda s, _: step(s, data), state, None, length=length)

    return chunk


@jax.jit
def _all_finite(tree) -> jax.Array:
    """One device-side flag: every leaf of ``tree`` is finite (no parameter copy to the host)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(tree)]))


def fit(
    learner: MetaLearner,
    sampler: Sampler,
    optimizer: optax.GradientTransformation,
    *,
    steps: int,
    meta_batch: int,
    state: TrainState,
    data: Any = None,
    chunk: int = 200,
    run_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 1000,
    keep: int = 3,
    progress: bool = True,
    on_chunk: Callable[[TrainState, dict], None] | None = None,
    validate: Callable[[Params], dict] | None = None,
    validate_every: int = 1000,
    mesh: Any = None,
    max_seconds: float | None = None,
) -> TrainState:
    """Meta-train until ``state.step == steps``.

    Args:
      learner: the meta-learner.
      sampler: task sampler (:class:`~mamlx.tasks.Sampler`); meta-batches are drawn
        with ``sample_batch(key, data, meta_batch)``.
      optimizer: outer optimizer.
      steps: total number of meta-steps (the run stops when ``state.step`` reaches it).
      meta_batch: tasks per meta-step.
      state: starting state (fresh from :func:`init_state` or a loaded checkpoint).
      data: the dataset array passed to the sampler (``None`` for analytic tasks).
      chunk: meta-steps per compiled host call.
      run_dir: if given, checkpoints go to ``run_dir/checkpoints`` and metrics to
        ``run_dir/metrics.jsonl``.
      checkpoint_every: steps between checkpoints (the final step is always saved).
      keep: number of checkpoints kept.
      progress: show a progress bar with the live loss.
      on_chunk: optional ``on_chunk(state, record)`` called after each chunk.
      validate: optional ``validate(params) -> {metric: value}`` on held-out
        classes, run every ``validate_every`` steps; the best state (highest
        ``accuracy``, else lowest ``loss``) is saved to ``run_dir/best.npz``.
      validate_every: steps between validations.
      mesh: optional device mesh (:func:`mamlx.sharding.task_mesh`): the task batch
        is sharded over its devices, params and data are replicated.
      max_seconds: optional wall-clock budget of this call's training (compiled
        chunks, compilation included; validation not counted): after the chunk that
        passes it, the run validates, checkpoints and returns early, as at its last
        step (``state.step < steps`` tells a stopped run). With several processes
        (``jax.distributed``), process 0's clock decides for all.

    Returns:
      The final :class:`TrainState`.

    Raises:
      NonFiniteLossError: naming the step where the loss became NaN/inf; the last
        good state is checkpointed first when ``run_dir`` is set.
      TrainingInterrupted: on Ctrl-C, after checkpointing the last finished chunk's
        state when ``run_dir`` is set; in every process of a ``jax.distributed`` run
        after a SIGTERM to any of them (JAX's preemption notice; all stop after the same
        chunk).
    """
    steps = check_count("steps", steps, low=0)
    chunk, checkpoint_every, validate_every = (
        check_count(name, v, low=1)
        for name, v in (
            ("chunk", chunk),
            ("checkpoint_every", checkpoint_every),
            ("validate_every", validate_every),
        )
    )
    keep = check_count("keep", keep, low=0)  # 0: keep every checkpoint
    if max_seconds is not None and not (isinstance(max_seconds, (int, float)) and max_seconds > 0):
        raise ValueError(f"max_seconds must be a positive number of seconds, got {max_seconds!r}")
    trained = 0.0  # seconds spent in compiled chunks in this call
    step_fn = make_step(learner, sampler, optimizer, meta_batch, mesh)
    if mesh is not None:
        state, data = sharding.replicate((state, data), mesh)
    chunks: dict[int, Callable] = {}
    start = int(state.step)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=start, unit="step", dynamic_ncols=True)
    pending = run_dir is not None and _pending_validation(Path(run_dir), int(state.step))
    many = jax.process_count() > 1
    if many:  # every host takes the same branch below (process 0 reads)
        pending = bool(multihost_utils.broadcast_one_to_all(np.asarray(pending)))
    if run_dir is not None and jax.process_index() != 0:
        run_dir = None  # several hosts: process 0 writes the log and the checkpoints
    metrics_file = Path(run_dir) / "metrics.jsonl" if run_dir else None
    calls = 0  # compiled calls so far, the same on every host (the preemption sync point)
    try:
        if pending:
            _finish_validation(metrics_file, run_dir, state, validate)
        while int(state.step) < steps:
            done = int(state.step)
            n = min(chunk, steps - done, checkpoint_every - done % checkpoint_every)
            if validate is not None:
                n = min(n, validate_every - done % validate_every)
            if n not in chunks:
                chunks[n] = make_chunk(step_fn, n)
            t0 = time.perf_counter()
            new_state, metrics = chunks[n](state, data)
            losses = np.asarray(metrics["loss"])
            seconds = time.perf_counter() - t0
            if not np.all(np.isfinite(losses)) or not bool(_all_finite(new_state.params)):
                bad = np.flatnonzero(~np.isfinite(losses))
                bad_step = done + (int(bad[0]) + 1 if bad.size else n)
                path = None
                if run_dir is not None:
                    path = checkpoint.save_step(run_dir, done, state, keep=keep and keep + 1)
                raise NonFiniteLossError(bad_step, path)
            state = new_state
            trained += seconds
            calls += 1
            late = max_seconds is not None and trained > max_seconds
            if many and max_seconds is not None:  # process 0's clock decides for every host
                late = bool(multihost_utils.broadcast_one_to_all(np.asarray(late)))
            last = int(state.step) == steps or late
            record = {"step": int(state.step), "seconds": round(seconds, 4)}
            record.update({k: float(np.mean(v)) for k, v in metrics.items()})
            record["tasks_per_s"] = round(n * meta_batch / max(seconds, 1e-9), 2)
            if validate is not None and (int(state.step) % validate_every == 0 or last):
                try:
                    val = _validation(validate, state)
                except Exception as e:
                    if run_dir is not None:  # keep the training done so far: resume from here
                        # The step's log line, marked: a resumed fit validates this step first.
                        _append(metrics_file, {**record, "validation": "pending"})
                        path = checkpoint.save_step(run_dir, int(state.step), state, keep=keep)
                        e.add_note(f"mamlx: validation failed; the state before it is in {path}")
                    raise
                record.update(val)
                if run_dir is not None:
                    _keep_best(run_dir, state, val)
            if metrics_file is not None:
                _append(metrics_file, record)
            if run_dir is not None and (int(state.step) % checkpoint_every == 0 or last):
                checkpoint.save_step(run_dir, int(state.step), state, keep=keep)
            if bar is not None:  # the chunk just finished: postfix first, then one redraw
                shown = {k: f"{v:.4g}" for k, v in record.items() if k not in ("step", "seconds")}
                bar.set_postfix(shown, refresh=False)
                bar.update(n)
            if on_chunk is not None:
                on_chunk(state, record)
            if last:
                break
            # SIGTERM to any process of a jax.distributed run (a scheduler's notice): JAX
            # catches it and every host reaches this point at the same call; checkpoint, stop.
            if multihost_utils.reached_preemption_sync_point(calls):
                raise KeyboardInterrupt
    except KeyboardInterrupt as e:
        if isinstance(e, TrainingInterrupted):
            raise
        path = None  # the chunk in flight is lost; the state before it is complete
        if run_dir is not None:
            path = checkpoint.save_step(run_dir, int(state.step), state, keep=keep)
        raise TrainingInterrupted(int(state.step), path, state) from e
    finally:
        if bar is not None:
            bar.close()
    return state


def _validation(validate: Callable[[Params], dict], state: TrainState) -> dict:
    return {f"val_{k}": float(v) for k, v in validate(state.params).items()}


def _append(metrics_file: Path, record: dict) -> None:
    metrics_file.parent.mkdir(parents=True, exist_ok=True)
    with open(metrics_file, "a") as f:
        f.write(json.dumps(record) + "\n")


def _pending_validation(run_dir: Path, step: int) -> bool:
    """Whether the log's last line is ``step``'s, marked as a validation left undone."""
    path = run_dir / "metrics.jsonl"
    if jax.process_index() != 0 or not path.is_file():
        return False
    lines = path.read_text().splitlines()
    try:
        last = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        return False
    return isinstance(last, dict) and last.get("step") == step and "validation" in last


def _finish_validation(metrics_file: Path | None, run_dir, state: TrainState, validate) -> None:
    """Run the validation a failed run left undone at the step it was saved at.

    A validation that raised left the step's training record marked ``"validation":
    "pending"`` and a checkpoint of that step (see :func:`fit`); a resumed run validates
    that state before training on, so the log and ``best.npz`` read as if nothing had
    failed. Resumed without ``validate``, the mark is dropped (the step stays unvalidated).
    All hosts validate (a sharded evaluator is a collective); process 0 writes.
    """
    val = {}
    if validate is not None:
        try:
            val = _validation(validate, state)
        except Exception as e:
            e.add_note(
                f"mamlx: validation failed again; the state of step {int(state.step)} is kept"
            )
            raise
    if metrics_file is None:
        return
    lines = metrics_file.read_text().splitlines()
    last = json.loads(lines[-1])
    del last["validation"]
    last.update(val)
    if val:
        _keep_best(run_dir, state, val)
    checkpoint.atomic_write_text(metrics_file, "\n".join([*lines[:-1], json.dumps(last)]) + "\n")


def _score(val: dict) -> float:
    score = val["val_accuracy"] if "val_accuracy" in val else -val["val_loss"]
    return score if np.isfinite(score) else -np.inf  # a NaN never becomes (or blocks) the best


def _keep_best(run_dir, state: TrainState, val: dict) -> None:
    path = Path(run_dir) / "best.npz"
    best = None
    if path.is_file():
        with np.load(path) as z:
            best = json.loads(str(z["__meta__"])).get("val")
    if np.isfinite(_score(val)) and (best is None or _score(val) > _score(best)):
        checkpoint.save(path, state, {"step": int(state.step), "val": val})


def restore(run_dir: str | os.PathLike, template: TrainState) -> TrainState | None:
    """Load the newest checkpoint of ``run_dir`` into ``template``'s structure, or ``None``.

    A checkpoint that cannot be read (cut short by a full disk, overwritten) is skipped
    with a warning naming it and the one used instead; one that does not match
    ``template`` (another configuration) raises. Metrics logged after the checkpoint
    used (all of them if there is none) are dropped
    from ``metrics.jsonl`` so a resumed run's log reads as one run; a line cut short
    by a kill is dropped too.
    """
    state, step, corrupt = None, 0, []
    for _, path in reversed(checkpoint.list_checkpoints(run_dir)):
        try:
            state, meta = checkpoint.load(path, template)
        except checkpoint.CorruptCheckpointError as e:
            corrupt.append(e)
            continue
        step = meta["step"]
        break
    if corrupt and state is None:
        raise checkpoint.CorruptCheckpointError(
            f"no checkpoint of {run_dir} can be read: " + "; ".join(map(str, corrupt))
        )
    if corrupt:
        warnings.warn(
            f"resuming from {path} (step {step}): {'; '.join(map(str, corrupt))} "
            "(left in place; training on overwrites it)",
            stacklevel=2,
        )
    metrics_file = Path(run_dir) / "metrics.jsonl"
    if metrics_file.is_file() and jax.process_index() == 0:
        kept = []
        for line in metrics_file.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # empty, or the last line of a killed run
            if isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(line)
        checkpoint.atomic_write_text(metrics_file, "".join(x + "\n" for x in kept))
    return state
