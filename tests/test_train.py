"""Compiled training loop, checkpoints, NaN handling and resume."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mamlx import checkpoint, maml
from mamlx.datasets import sinusoid_model
from mamlx.tasks import sinusoid
from mamlx.train import NonFiniteLossError, fit, init_state, make_step, restore


def setup(opt=None):
    apply_fn, init_fn = sinusoid_model((16,))
    learner = maml(apply_fn, init_fn, inner_lr=0.01)
    opt = opt or optax.adam(1e-3)
    return learner, opt, init_state(learner, opt, jax.random.PRNGKey(0))


def run(state, learner, opt, steps, run_dir=None, **kw):
    return fit(
        learner,
        sinusoid(5),
        opt,
        steps=steps,
        meta_batch=4,
        state=state,
        run_dir=run_dir,
        progress=False,
        **kw,
    )


def trees_equal(a, b):
    return all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_training_reduces_meta_loss():
    learner = maml(*sinusoid_model(), inner_lr=0.01)
    opt = optax.adam(1e-3)
    losses = []
    fit(
        learner,
        sinusoid(10),
        opt,
        steps=1500,
        meta_batch=25,
        progress=False,
        chunk=300,
        state=init_state(learner, opt, jax.random.PRNGKey(0)),
        on_chunk=lambda s, r: losses.append(r["loss"]),
    )
    print("chunk-mean meta-losses:", losses)
    # measured (seed 0, 300-step chunk means): 3.50 -> 1.55; require a clear drop
    assert losses[-1] < 0.6 * losses[0]


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    learner, opt, state0 = setup()
    full = run(state0, learner, opt, 30, chunk=7)
    part = run(state0, learner, opt, 12, run_dir=tmp_path, chunk=7, checkpoint_every=6)
    assert int(part.step) == 12
    restored = restore(tmp_path, state0)
    assert int(restored.step) == 12 and trees_equal(restored, part)
    resumed = run(restored, learner, opt, 30, run_dir=tmp_path, chunk=7, checkpoint_every=6)
    assert trees_equal(resumed.params, full.params) and trees_equal(
        resumed.opt_state, full.opt_state
    )
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 30


def best_step(run_dir):
    with np.load(run_dir / "best.npz") as z:
        return json.loads(str(z["__meta__"]))["step"]


def test_failed_validation_keeps_the_training_done_so_far(tmp_path):
    learner, opt, state0 = setup()
    full = run(state0, learner, opt, 12, chunk=4)
    calls = []

    def validate(params):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("validation data went away")
        return {"loss": float(len(calls))}

    kw = dict(chunk=4, checkpoint_every=100, validate=validate, validate_every=4)
    with pytest.raises(RuntimeError, match="went away") as err:
        run(state0, learner, opt, 12, run_dir=tmp_path, **kw)
    assert "step_000000008.npz" in " ".join(err.value.__notes__)
    saved = restore(tmp_path, state0)
    assert int(saved.step) == 8  # no periodic checkpoint was due; the failure saved one
    # Resumed without a validator (a copy of the run), the mark is dropped, not left behind.
    other = tmp_path.parent / (tmp_path.name + "_novalidate")
    shutil.copytree(tmp_path, other)
    run(restore(other, state0), learner, opt, 12, run_dir=other, chunk=4)
    log = [json.loads(x) for x in (other / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [4, 8, 12] and all("validation" not in r for r in log)
    # The resumed run first validates step 8, so the log reads as an uninterrupted run's.
    resumed = run(saved, learner, opt, 12, run_dir=tmp_path, **kw)
    assert trees_equal(resumed.params, full.params)
    log = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["val_loss"]) for r in log] == [(4, 1.0), (8, 3.0), (12, 4.0)]
    assert all("validation" not in r and "loss" in r for r in log)
    # Validation losses 1, 3, 4: the best (lowest) is step 4's.
    assert best_step(tmp_path) == 4


def test_nan_validation_never_becomes_or_blocks_the_best_checkpoint(tmp_path):
    learner, opt, state0 = setup()
    run(
        state0,
        learner,
        opt,
        8,
        run_dir=tmp_path / "nan",
        chunk=4,
        validate_every=4,
        validate=lambda p: {"loss": float("nan")},
    )
    assert not (tmp_path / "nan" / "best.npz").exists()  # no finite score: no best state
    values = iter([float("nan"), 0.5, 0.9])
    run(
        state0,
        learner,
        opt,
        12,
        run_dir=tmp_path,
        chunk=4,
        validate_every=4,
        validate=lambda p: {"accuracy": next(values)},
    )
    assert best_step(tmp_path) == 12


def nan_at(count_at):
    """An optax transformation that poisons the update number ``count_at`` (0-based)."""

    def init(params):
        return optax.ScaleByScheduleState(count=jax.numpy.zeros([], jax.numpy.int32))

    def update(updates, state, params=None):
        bad = state.count == count_at
        updates = jax.tree.map(lambda u: jax.numpy.where(bad, jax.numpy.nan, u), updates)
        return updates, optax.ScaleByScheduleState(count=state.count + 1)

    return optax.GradientTransformation(init, update)


def test_nan_loss_stops_with_the_step_and_keeps_last_good_checkpoint(tmp_path):
    opt = optax.chain(optax.adam(1e-3), nan_at(6))  # update of step 7 is NaN -> loss of step 8
    learner, opt, state = setup(opt)
    with pytest.raises(NonFiniteLossError, match="step 8") as err:
        run(state, learner, opt, 20, run_dir=tmp_path, chunk=5, checkpoint_every=5)
    assert err.value.step == 8
    good = restore(tmp_path, state)
    assert int(good.step) == 5
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(good.params))


class OutOfRangeLabels:
    """A few-shot sampler whose query labels are shifted past the number of ways."""

    def __init__(self, sampler, shift):
        self.sampler, self.shift = sampler, shift

    def sample_batch(self, key, data, num_tasks):
        episodes = self.sampler.sample_batch(key, data, num_tasks)
        return episodes._replace(query_y=episodes.query_y + self.shift)


def test_nan_loss_error_names_out_of_range_labels_as_a_likely_cause():
    from metric_helpers import tiny_conv, tiny_data

    from mamlx import protonet
    from mamlx.tasks import fewshot_sampler

    learner, opt = protonet(*tiny_conv()), optax.adam(1e-3)
    # Labels are traced inside the compiled loop, so the loss cannot check their
    # range; the non-finite-loss error must point at them instead.
    for shift in (100, -3):  # -3: negative labels, which indexing would wrap silently
        with pytest.raises(NonFiniteLossError, match=r"step 1\b") as err:
            fit(
                learner,
                OutOfRangeLabels(fewshot_sampler(3, 1, 2), shift),
                opt,
                steps=2,
                meta_batch=2,
                state=init_state(learner, opt, jax.random.PRNGKey(0)),
                data=tiny_data(),
                chunk=2,
                progress=False,
            )
        msg = str(err.value)
        assert "labels outside [0, ways)" in msg, msg
    assert "learning rate" in msg and "inputs" in msg, msg


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    learner, opt, state = setup()
    path = checkpoint.save_step(tmp_path, 1, state)
    before = path.read_bytes()

    def explode(f, **arrays):
        f.write(b"partial")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(np, "savez", explode)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_step(tmp_path, 2, state)
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [path.name]
    assert path.read_bytes() == before
    assert checkpoint.latest_checkpoint(tmp_path) == path


def test_corrupt_or_mismatched_checkpoints_are_refused(tmp_path):
    learner, opt, state = setup()
    path = checkpoint.save_step(tmp_path, 3, state)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        checkpoint.load(path, state)
    checkpoint.save(path, state)
    other = init_state(maml(*sinusoid_model((8,)), inner_lr=0.01), opt, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="does not match this configuration"):
        checkpoint.load(path, other)
    with pytest.raises(FileNotFoundError):
        checkpoint.load(tmp_path / "nope.npz", state)


def test_old_checkpoints_are_pruned(tmp_path):
    learner, opt, state = setup()
    for s in range(1, 6):
        checkpoint.save_step(tmp_path, s, state, keep=2)
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path)] == [4, 5]


def test_bad_training_arguments():
    learner, opt, state = setup()
    with pytest.raises(ValueError, match="meta_batch"):
        fit(learner, sinusoid(5), opt, steps=5, meta_batch=0, state=state, progress=False)
    with pytest.raises(ValueError, match="steps"):
        fit(learner, sinusoid(5), opt, steps=-1, meta_batch=2, state=state, progress=False)


def test_init_state_strips_weak_types_so_the_step_compiles_once():
    base = maml(*sinusoid_model(), inner_lr=0.01)

    def meta_grad(params, episodes):  # the extra leaf gets a gradient too, so it is updated
        grads, metrics = base.meta_grad(params[0], episodes)
        return (grads, 0.1 * params[1]), metrics

    learner = base._replace(
        init=lambda key: (base.init(key), jnp.asarray(0.5)), meta_grad=meta_grad
    )
    assert learner.init(jax.random.PRNGKey(0))[1].weak_type
    state = init_state(learner, optax.adam(1e-3), jax.random.PRNGKey(0))
    assert not any(x.weak_type for x in jax.tree.leaves(state.params))
    assert state.params[1].dtype == jnp.float32
    step = jax.jit(make_step(learner, sinusoid(5), optax.adam(1e-3), meta_batch=2))
    state, _ = step(state, None)
    step(state, None)
    assert step._cache_size() == 1  # the updated state has the same types: no second compile


def test_typed_keys_train_and_checkpoint_like_raw_keys(tmp_path):
    learner, opt, raw = setup()
    typed = init_state(learner, opt, jax.random.key(0))
    assert trees_equal(typed, raw)  # the state holds the key's raw data
    done = run(typed, learner, opt, 6, run_dir=tmp_path, chunk=3, checkpoint_every=3)
    assert trees_equal(restore(tmp_path, raw), done)


def test_figures_leave_the_matplotlib_backend_alone(tmp_path):
    import matplotlib

    from mamlx.plots import plot_sinusoid_fits

    before = matplotlib.get_backend()
    matplotlib.use("pdf")  # stands in for a notebook's inline backend
    try:
        learner, _, state = setup()
        path = tmp_path / "fits.png"
        plot_sinusoid_fits([("maml", learner, state.params)], sinusoid(5), jax.random.key(1), path)
        assert path.read_bytes()[:4] == b"\x89PNG"
        assert matplotlib.get_backend() == "pdf"
    finally:
        matplotlib.use(before)


def test_counts_accept_numpy_integers_and_missing_data_is_named():
    # One rule for counts everywhere (mamlx._checks.check_count): NumPy integers pass.
    from mamlx.tasks import fewshot_sampler

    apply_fn, init_fn = sinusoid_model((16,))
    learner = maml(apply_fn, init_fn, inner_lr=0.01, inner_steps=np.int64(1))
    opt = optax.adam(1e-3)
    state = init_state(learner, opt, jax.random.PRNGKey(0))
    out = fit(
        learner,
        sinusoid(5),
        opt,
        steps=np.int64(3),
        meta_batch=np.int32(4),
        state=state,
        chunk=np.int64(2),
        progress=False,
    )
    assert int(out.step) == 3
    ep = sinusoid(5).sample(jax.random.PRNGKey(1))
    adapted = learner.adapt(out.params, ep.support_x, ep.support_y, steps=np.int64(2))
    assert jax.tree.structure(adapted) == jax.tree.structure(out.params)
    for bad in (True, 2.5, -1):
        with pytest.raises(ValueError, match="steps must be an integer >= 0"):
            fit(learner, sinusoid(5), opt, steps=bad, meta_batch=4, state=state, progress=False)
    with pytest.raises(ValueError, match=r"meta_batch must be an integer >= 1, got 0"):
        fit(learner, sinusoid(5), opt, steps=1, meta_batch=0, state=state, progress=False)
    # A few-shot sampler without its images says so (not "None is not a valid value").
    with pytest.raises(ValueError, match=r"got None: pass the images"):
        fit(
            learner,
            fewshot_sampler(5, 1, 1),
            opt,
            steps=1,
            meta_batch=2,
            state=state,
            progress=False,
        )
