"""Evaluation speed: tasks adapted vectorized (``vmap``) or one after another (``lax.map``).

For each preset, ``mamlx.make_evaluator(..., task_map=...)`` on the same held-out validation tasks
(sampled in the call, one compiled call of all of them; adapt with the preset's test-time steps,
query metrics), once with ``task_map="vmap"`` and once with ``"map"`` (``lax.map``), interleaved
(vmap, map, vmap, map), each call timed after an untimed first one that compiles. Reports
tasks/s, the map/vmap ratio and the largest difference of the per-task metrics. Parameters are the
untrained initialization (speed does not depend on them). Writes
``benchmarks/results/eval_task_map.{md,json}``.

Usage::

    python benchmarks/eval_task_map.py [--presets maml-5w1s:64,reptile-20w1s:16] [--data DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mamlx import experiments  # noqa: E402
from mamlx.evaluation import make_evaluator  # noqa: E402
from mamlx.presets import preset_config  # noqa: E402

from common import git_rev, machine, write_results  # noqa: E402


def measure(preset: str, tasks: int, data_dir: str, rounds: int = 2) -> dict:
    config = preset_config(preset, data_dir=data_dir)
    exp = experiments.build(config)
    params = exp.learner.init(jax.random.PRNGKey(0))
    steps = config.eval_steps
    # mamlx.make_evaluator itself, one compiled call of all the tasks (sampling included)
    runs = {
        tm: make_evaluator(
            exp.learner, exp.eval_sampler, steps=[steps], batch_size=tasks, task_map=tm
        )
        for tm in ("vmap", "map")
    }

    def call(run):
        res = run(
            params, exp.splits["val"], key=jax.random.PRNGKey(1), num_tasks=tasks, per_task=True
        )
        return res[steps]

    times: dict = {k: [] for k in runs}
    compile_s, out = {}, {}
    for r in range(rounds):
        for name, run in runs.items():
            if r == 0:
                t = time.perf_counter()
                out[name] = call(run)
                compile_s[name] = time.perf_counter() - t
            t = time.perf_counter()
            call(run)
            times[name].append(time.perf_counter() - t)
    rate = {k: tasks / statistics.median(v) for k, v in times.items()}
    diff = {
        k: float(np.max(np.abs(np.asarray(out["vmap"][k]) - np.asarray(out["map"][k]))))
        for k in out["vmap"]
    }
    return {
        "preset": preset,
        "tasks": tasks,
        "test_steps": config.eval_steps,
        "tasks_per_s": rate,
        "first_call_s": compile_s,
        "map_over_vmap": rate["map"] / rate["vmap"],
        "max_abs_difference": diff,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="maml-5w1s:64,reptile-20w1s:16", help="PRESET:TASKS,...")
    p.add_argument(
        "--data", default=None, help="Omniglot folder (default: ../shared/data/omniglot)"
    )
    args = p.parse_args(argv)
    data = args.data or str(Path(__file__).resolve().parents[1].parent / "shared/data/omniglot")
    rows = []
    for item in args.presets.split(","):
        preset, _, n = item.partition(":")
        row = measure(preset, int(n or 32), data)
        rows.append(row)
        print(
            f"{preset}: vmap {row['tasks_per_s']['vmap']:.2f}, map {row['tasks_per_s']['map']:.2f}"
            f" tasks/s ({row['map_over_vmap']:.2f}x); max differences {row['max_abs_difference']}",
            flush=True,
        )
    command = "python benchmarks/eval_task_map.py " + " ".join(argv or sys.argv[1:])
    lines = [
        "# Evaluation: tasks vectorized (vmap) or one after another (lax.map)",
        "",
        f"Command: `{command.strip()}` (commit {git_rev()})",
        "",
        f"Machine: {machine()}",
        "",
        "`mamlx.make_evaluator(..., task_map='vmap' | 'map')` (sampling, adaptation with the preset's "
        "test-time steps, query metrics, one compiled call of all the tasks), the same validation "
        "tasks both ways, untrained parameters; median of 2 interleaved timed calls after a first "
        "one that compiles. `make_evaluator(task_map='auto')` "
        "(the default, as in training) uses `lax.map` on CPU. The differences are float32 round-off, "
        "which long adaptations amplify (Reptile's 97 Adam steps from an untrained network; there "
        "vectorized batches of 4 tasks and of 1 differ by 1e-3 in a task's loss too).",
        "",
        "| preset | tasks | test steps | vmap tasks/s | map tasks/s | map / vmap | first call vmap / map s "
        "| largest per-task difference (loss, accuracy) |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        d = r["max_abs_difference"]
        lines.append(
            f"| {r['preset']} | {r['tasks']} | {r['test_steps']} | {r['tasks_per_s']['vmap']:.2f} "
            f"| {r['tasks_per_s']['map']:.2f} | {r['map_over_vmap']:.2f}x "
            f"| {r['first_call_s']['vmap']:.1f} / {r['first_call_s']['map']:.1f} "
            f"| {d.get('loss', float('nan')):.1e}, {d.get('accuracy', float('nan')):.2f} |"
        )
    path = write_results("eval_task_map", "\n".join(lines) + "\n", {"rows": rows})
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
