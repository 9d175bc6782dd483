"""`mamlx train --distributed` with two processes on this machine (CPU collectives over TCP).

Each test starts the processes as a multi-host launch would, one CPU device each, on a free
localhost port: told where they sit by the README's flags (``--coordinator-address``,
``--num-processes``, ``--process-id``) or by the environment (``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``); the states they train are compared with a
one-process run of the same global meta-batch.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mamlx import checkpoint
from mamlx.cli import main

from conftest import REPO

HEARTBEAT = 10  # seconds: a process silent this long counts as dead
# A tiny run: the sine-wave MLP, 4 tasks per step (2 per process), 10 steps per call.
RUN = ["--meta-batch", "4", "--chunk", "10", "--checkpoint-every", "20", "--no-progress"]


_PLACE_VARS = {"JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(logs: Path, *argv: str, processes: int = 2, via: str = "env") -> list[subprocess.Popen]:
    """``mamlx train ARGV --distributed`` in ``processes`` processes, placed by the
    environment (``via="env"``) or by the command-line flags (``via="flags"``); output in
    ``logs``."""
    logs.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    procs = []
    for i in range(processes):
        flags = os.environ.get("XLA_FLAGS", "").split()
        place = {
            "coordinator_address": f"127.0.0.1:{port}",
            "num_processes": str(processes),
            "process_id": str(i),
        }
        env = {k: v for k, v in os.environ.items() if k.upper() not in _PLACE_VARS}
        env.update(
            XLA_FLAGS=" ".join(f for f in flags if "force_host_platform_device_count" not in f),
            JAX_PLATFORMS="cpu",
        )
        cmd = [sys.executable, "-m", "mamlx.cli", "train", *argv, "--distributed"]
        if via == "env":
            env.update({"JAX_" + k.upper(): v for k, v in place.items()})
        else:
            cmd += [a for k, v in place.items() for a in ("--" + k.replace("_", "-"), v)]
        cmd += ["--heartbeat-timeout", str(HEARTBEAT)]
        with open(logs / f"{i}.out", "w") as out, open(logs / f"{i}.err", "w") as err:
            procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=err))
    return procs


def _wait(procs: list[subprocess.Popen], logs: Path, timeout: float = 180) -> list[str]:
    """Wait for every process; return their outputs (stdout + stderr), killing stragglers."""
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [
        (logs / f"{i}.out").read_text() + (logs / f"{i}.err").read_text() for i in range(len(procs))
    ]


def _last_step(run_dir: Path) -> int:
    found = checkpoint.list_checkpoints(run_dir)
    return found[-1][0] if found else 0


def _assert_same_state(a_dir: Path, b_dir: Path) -> None:
    """The newest checkpoints of two runs agree to float32 round-off (integers exactly)."""
    a = np.load(checkpoint.latest_checkpoint(a_dir))
    b = np.load(checkpoint.latest_checkpoint(b_dir))
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        if k == "__meta__":
            continue
        if np.issubdtype(a[k].dtype, np.floating):
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.slow
def test_two_processes_train_as_one(tmp_path):
    run = tmp_path / "two"
    # placed by the flags the README gives (the killed-process test places by the environment)
    procs = _launch(
        tmp_path / "logs", "sinusoid", "--steps", "20", *RUN, "--out", str(run), via="flags"
    )
    outs = _wait(procs, tmp_path / "logs")
    for i, (p, out) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 0, f"process {i}:\n{out}"
        assert "done: step=20" in out, out
    # process 0 alone writes the log: one line per chunk, not one per process
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    one = tmp_path / "one"
    assert main(["train", "sinusoid", "--steps", "20", *RUN, "--out", str(one)]) == 0
    _assert_same_state(run, one)


def _run_until(procs, logs: Path, run_dir: Path, step: int) -> None:
    """Wait until ``run_dir`` holds a checkpoint of ``step`` or later (every process alive)."""
    deadline = time.monotonic() + 120
    while _last_step(run_dir) < step:
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise AssertionError("\n".join(_wait(procs, logs, timeout=1)))
        time.sleep(0.05)


def _stop_time(proc: subprocess.Popen, timeout: float) -> float:
    """Seconds from now until ``proc`` exits (``timeout`` if it does not)."""
    start = time.monotonic()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    return time.monotonic() - start


@pytest.mark.slow
def test_a_killed_process_stops_the_other_and_the_run_resumes(tmp_path):
    run, logs = tmp_path / "run", tmp_path / "logs"
    procs = _launch(logs, "sinusoid", "--steps", "100000", *RUN, "--out", str(run))
    _run_until(procs, logs, run, 40)  # mid-run: 40 steps checkpointed, many to go
    procs[1].send_signal(signal.SIGKILL)
    stopped = _stop_time(procs[0], timeout=6 * HEARTBEAT)
    outs = _wait(procs, logs, timeout=1)
    assert stopped < 3 * HEARTBEAT, f"the other process took {stopped:.1f} s to stop"
    assert procs[0].returncode == 2, outs[0]
    assert "another process of this --distributed run stopped" in outs[0], outs[0]
    assert f"resume with: mamlx train --resume {run} --distributed" in outs[0], outs[0]
    last = _last_step(run)
    # Both processes again, from the last checkpoint; then a scheduler's SIGTERM to one of
    # them: every process stops at the same step, after process 0 has checkpointed it.
    procs = _launch(logs, "--resume", str(run), "--no-progress")
    _run_until(procs, logs, run, last + 20)
    procs[1].send_signal(signal.SIGTERM)
    outs = _wait(procs, logs, timeout=6 * HEARTBEAT)
    for i, (p, out) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 130, f"process {i}:\n{out}"
        assert f"resuming {run} at step {last}" in out, out
    stop = _last_step(run)
    assert f"interrupted at step {stop}; checkpoint saved" in outs[0], outs[0]
    assert f"interrupted at step {stop}; process 0 saves the checkpoint" in outs[1], outs[1]
    # The state then is the one of a single process trained that far without a stop.
    one = tmp_path / "one"
    assert main(["train", "sinusoid", "--steps", str(stop), *RUN, "--out", str(one)]) == 0
    _assert_same_state(run, one)
    print(f"killed process 1: process 0 stopped {stopped:.2f} s later; SIGTERM at step {stop}")
