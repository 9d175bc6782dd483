"""Task-batch sharding over (emulated) devices gives the single-device result."""

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO

SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np, optax
    from mamlx import sharding
    from mamlx import maml
    from mamlx.datasets import sinusoid_model
    from mamlx.tasks import sinusoid
    from mamlx.train import init_state, make_step, fit

    assert len(jax.devices()) == 4, jax.devices()
    learner = maml(*sinusoid_model((16,)), inner_lr=0.01, inner_steps=2)
    opt = optax.adam(1e-3)
    state = init_state(learner, opt, jax.random.PRNGKey(0))
    mesh = sharding.task_mesh()
    single = jax.jit(make_step(learner, sinusoid(5), opt, 8))
    sharded = jax.jit(make_step(learner, sinusoid(5), opt, 8, mesh))
    s1, m1 = single(state, None)
    s4, m4 = sharded(sharding.replicate(state, mesh), None)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5)
    # the meta-gradient itself, sharded over tasks, equals the single-device one
    eps = sinusoid(5).sample_batch(jax.random.PRNGKey(3), None, 8)
    g1, _ = jax.jit(learner.meta_grad)(state.params, eps)
    g4, _ = jax.jit(learner.meta_grad)(sharding.replicate(state.params, mesh),
                                       jax.device_put(eps, sharding.by_task(mesh)))
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g4)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)
    # task_map="map": each device loops over its own tasks, the batch is never gathered
    lm = maml(*sinusoid_model((16,)), inner_lr=0.01, inner_steps=2, task_map="map")
    sharded_map = jax.jit(make_step(lm, sinusoid(5), opt, 8, mesh))
    hlo = sharded_map.lower(sharding.replicate(state, mesh), None).compile().as_text()
    assert "all-gather" not in hlo, "the task batch was gathered onto every device"
    s1m, _ = jax.jit(make_step(lm, sinusoid(5), opt, 8))(state, None)
    s4m, _ = sharded_map(sharding.replicate(state, mesh), None)
    for a, b in zip(jax.tree.leaves(s1m.params), jax.tree.leaves(s4m.params)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)
    # learners with recurrent state started from zeros (meta-LSTM, matching's full-context
    # embeddings, an LSTM-optimizer inner loop) run per device too (one task map each: the state is the same under both)
    import sys
    sys.path.insert(0, "tests")
    from metric_helpers import tiny_conv, tiny_data
    from mamlx import matching, meta_lstm, reptile
    from mamlx.optimizers import lstm_optimizer, lstm_optimizer_params_sgd
    from mamlx.tasks import fewshot_sampler
    images = tiny_data()
    lopt = lstm_optimizer(lstm_optimizer_params_sgd(0.01, hidden_size=4))
    cases = [
        (meta_lstm(*sinusoid_model((8,)), inner_steps=2, init_lr=0.01), sinusoid(5), None),
        (reptile(*sinusoid_model((8,)), inner_opt=lopt, inner_steps=2), sinusoid(5), None),
        # looping over tasks: the first inner steps of a device's tasks vectorized (first_steps)
        (reptile(*sinusoid_model((8,)), inner_opt=0.05, inner_steps=2, task_map="map"),
         sinusoid(5), None),
        (matching(*tiny_conv(), fce_steps=2, feature_dim=16, task_map="map"),
         fewshot_sampler(3, 1, 2), images),
    ]
    sgd = optax.sgd(0.1)  # Adam's first step would blow up rounding noise in zero gradients
    for lr, sampler, data in cases:
        st = init_state(lr, sgd, jax.random.PRNGKey(0))
        one, m1 = jax.jit(make_step(lr, sampler, sgd, 8))(st, data)
        four, m4 = jax.jit(make_step(lr, sampler, sgd, 8, mesh))(
            sharding.replicate(st, mesh), data)
        np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5)
        for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params)):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    # whole training loop through fit, 1 vs 4 devices
    f1 = fit(learner, sinusoid(5), opt, steps=20, meta_batch=8, state=state, progress=False)
    f4 = fit(learner, sinusoid(5), opt, steps=20, meta_batch=8, state=state, progress=False,
             mesh=mesh)
    for a, b in zip(jax.tree.leaves(f1.params), jax.tree.leaves(f4.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    try:
        make_step(learner, sinusoid(5), opt, 6, mesh)
    except ValueError as e:
        assert "not divisible" in str(e)
    else:
        raise AssertionError("meta_batch 6 over 4 devices must be refused")
    # the CLI flag takes the same path
    import tempfile
    from mamlx.cli import main
    out = tempfile.mkdtemp() + "/run"
    assert main(["train", "sinusoid", "--steps", "8", "--meta-batch", "8", "--devices", "4",
                 "--no-progress", "--no-compile-cache", "--out", out]) == 0
    assert main(["train", "sinusoid", "--steps", "8", "--meta-batch", "6", "--devices", "4",
                 "--no-progress", "--no-compile-cache", "--out", out + "2"]) == 2
    # Reptile's carried inner state runs the tasks in order: refused over several devices
    import contextlib, io
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["train", "sinusoid", "--algo", "reptile", "--no-reset-inner-state",
                     "--steps", "2", "--meta-batch", "8", "--devices", "4", "--no-progress",
                     "--no-compile-cache", "--out", out + "3"]) == 2
    assert "carries the inner optimizer's state" in err.getvalue(), err.getvalue()
    print("SHARDING OK")
    """
)


def run_script(
    script: str, marker: str, cpu_devices: int | None = None, argv: tuple[str, ...] = ()
) -> str:
    """Run ``script`` in a fresh CPU-only process (JAX's device count is fixed per process):
    with ``cpu_devices`` emulated devices, or none forced, and ``argv`` as ``sys.argv[1:]``;
    it must print ``marker``. Returns its standard output."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    if cpu_devices:
        flags.append(f"--xla_force_host_platform_device_count={cpu_devices}")
    env = dict(os.environ, XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", script, *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert marker in proc.stdout
    return proc.stdout


@pytest.mark.slow
def test_sharded_meta_gradient_equals_single_device():
    run_script(SCRIPT, "SHARDING OK", cpu_devices=4)


CPU_DEVICES = textwrap.dedent(
    """
    import contextlib, io, json, pathlib, sys
    import jax, numpy as np
    from mamlx import checkpoint
    from mamlx.cli import main

    out = pathlib.Path(sys.argv[1])
    common = ["train", "sinusoid", "--steps", "8", "--meta-batch", "8", "--chunk", "4",
              "--no-progress", "--no-compile-cache"]
    assert main(common + ["--cpu-devices", "2", "--out", str(out / "two")]) == 0
    assert len(jax.devices()) == 2, jax.devices()
    run = json.loads((out / "two" / "run.json").read_text())
    assert (run["cpu_devices"], run["devices"], run["resolved"]["device_count"]) == (2, 0, 2)
    assert main(common + ["--devices", "1", "--out", str(out / "one")]) == 0
    two = np.load(checkpoint.latest_checkpoint(out / "two"))
    one = np.load(checkpoint.latest_checkpoint(out / "one"))
    leaves = [k for k in one.files if k.startswith("leaf:")]
    assert leaves and sorted(leaves) == sorted(k for k in two.files if k.startswith("leaf:"))
    for k in leaves:  # the same training: tasks split over two devices, gradients averaged
        np.testing.assert_allclose(one[k], two[k], rtol=1e-4, atol=1e-6, err_msg=k)
    # resuming in a process whose backend already has the saved count is fine, and keeps it
    assert main(["train", "--resume", str(out / "two"), "--steps", "12", "--no-progress"]) == 0
    run = json.loads((out / "two" / "run.json").read_text())
    assert (run["cpu_devices"], run["devices"], run["resolved"]["device_count"]) == (2, 0, 2)
    assert "cpu_devices_given" not in run
    # each device loops over its own tasks, as on one CPU device
    from mamlx.algorithms.base import resolve_task_map
    assert resolve_task_map("auto") == "map"
    # another count, once the backend runs: refused with the reason, nothing written
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(common + ["--cpu-devices", "3", "--out", str(out / "three")]) == 2
    assert "already started in this process with 2 device(s)" in err.getvalue(), err.getvalue()
    assert not (out / "three").exists()
    # benchmarks/throughput.py's @2 rows time the same training over the two devices
    sys.path.insert(0, "benchmarks")
    import dataclasses, throughput
    tiny = dataclasses.replace(throughput.CHECK, name="tiny", image=(9, 9, 1), classes=6)
    for devices in (1, 2):
        r = throughput.bench_jax(tiny, "fomaml", "patches", "map", 2, chunk=2, devices=devices)
        assert np.isfinite(r["loss"]) and len(r["times_s"]) == 1, r
    (_, s1, d1, _), (_, s2, d2, _) = throughput._PREPARED.values()
    assert len(d2.sharding.device_set) == 2 and int(s1.step) == int(s2.step) == 6
    # Conv biases before batch norm have zero gradient: Adam turns its rounding noise into
    # full steps, so they differ, and cancel in the normalization; the rest trains alike.
    leaves = jax.tree_util.tree_leaves_with_path
    compared = 0
    for (path, a), (_, b) in zip(leaves(s1.params), leaves(s2.params)):
        name = jax.tree_util.keystr(path)
        if name.startswith("['blocks']") and name.endswith("]['bias']") and "norm" not in name:
            continue
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=name)
        compared += 1
    assert compared == 14, compared
    print("CPU DEVICES OK")
    """
)


# A new process resuming the split run: no flag, the split comes from run.json, set before
# JAX starts; the resumed run equals one trained straight through on the two devices.
FRESH_RESUME = textwrap.dedent(
    """
    import json, pathlib, sys
    import jax, numpy as np
    from mamlx import checkpoint
    from mamlx.cli import main

    out = pathlib.Path(sys.argv[1])
    assert main(["train", "--resume", str(out / "two"), "--steps", "16", "--no-progress"]) == 0
    assert len(jax.devices()) == 2, jax.devices()
    run = json.loads((out / "two" / "run.json").read_text())
    assert (run["cpu_devices"], run["devices"], run["resolved"]["device_count"]) == (2, 0, 2)
    assert main(["train", "sinusoid", "--steps", "16", "--meta-batch", "8", "--chunk", "4",
                 "--no-progress", "--no-compile-cache", "--cpu-devices", "2",
                 "--out", str(out / "straight")]) == 0
    paths = [checkpoint.latest_checkpoint(out / name) for name in ("two", "straight")]
    assert [p.name for p in paths] == [checkpoint.step_path(out, 16).name] * 2, paths
    resumed, straight = map(np.load, paths)
    leaves = [k for k in straight.files if k.startswith("leaf:")]
    assert leaves and sorted(leaves) == sorted(k for k in resumed.files if k.startswith("leaf:"))
    for k in leaves:
        np.testing.assert_allclose(resumed[k], straight[k], rtol=1e-6, atol=1e-7, err_msg=k)
    print("FRESH RESUME OK")
    """
)


@pytest.mark.slow
def test_cli_cpu_devices_split_the_cpu_and_train_as_one_device(tmp_path):
    run_script(CPU_DEVICES, "CPU DEVICES OK", argv=(str(tmp_path),))  # it splits the CPU itself
    run_script(FRESH_RESUME, "FRESH RESUME OK", argv=(str(tmp_path),))
