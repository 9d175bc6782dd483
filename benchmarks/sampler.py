"""Episode-sampling throughput of `mamlx.tasks.fewshot_sampler` on Omniglot.

Measures episodes/s for batches of 32 tasks, 5-way 1-shot (15 queries) and
20-way 5-shot (5 queries), on the 1100 Vinyals training characters with
rotations (4400 classes), 28x28. The sampler is jitted, the data sits on the
device once, warm-up (compilation) is excluded, and the figure is the median
over repeats. Writes ``benchmarks/results/sampler.{md,json}``.

Usage::

    python benchmarks/sampler.py [--data DIR] [--repeats 20] [--iters 50]

(from a source checkout that is not pip-installed: ``PYTHONPATH=. python ...``)

``--data`` is the folder holding ``images_background.npz`` and
``images_evaluation.npz`` (default ``$MAMLX_DATA_DIR/omniglot`` or
``../shared/data/omniglot`` beside the repository).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import jax.numpy as jnp
import numpy as np

from mamlx.tasks import fewshot_sampler, load_omniglot_npz, omniglot_split

from common import cpu_name  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SETTINGS = [("5-way 1-shot", 5, 1, 15), ("20-way 5-shot", 20, 5, 5)]


def time_sampling(
    sample_batch, data: jax.Array, num_tasks: int = 32, repeats: int = 20, iters: int = 50
) -> dict:
    """Time a jitted ``sample_batch(key, data, num_tasks)`` alone.

    Args:
      sample_batch: ``FewShotSampler.sample_batch`` (jitted here, ``num_tasks`` static).
      data: the class array, already on the device.
      num_tasks: tasks per batch.
      repeats: timed repeats; the median is reported.
      iters: batches per repeat (keys differ per batch).

    Returns:
      dict with ``batch_ms`` (median ms per batch), ``episodes_per_s`` (median),
      ``compile_s`` (first call) and the raw per-repeat ``batch_ms_all``.
    """
    fn = jax.jit(sample_batch, static_argnums=2)
    keys = jax.random.split(jax.random.key(0), iters)
    start = time.perf_counter()
    jax.block_until_ready(fn(keys[0], data, num_tasks))
    compile_s = time.perf_counter() - start
    for k in keys[:3]:  # warm-up beyond compilation
        jax.block_until_ready(fn(k, data, num_tasks))
    per_batch = []
    for _ in range(repeats):
        start = time.perf_counter()
        for k in keys:
            out = fn(k, data, num_tasks)
        jax.block_until_ready(out)
        per_batch.append((time.perf_counter() - start) / iters)
    med = statistics.median(per_batch)
    return {
        "batch_ms": 1e3 * med,
        "episodes_per_s": num_tasks / med,
        "compile_s": compile_s,
        "batch_ms_all": [1e3 * t for t in per_batch],
    }


def _machine() -> str:
    cpu = cpu_name()
    dev = jax.devices()[0]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs (load average {load} at the end of the run); "
        f"jax {jax.__version__} on {dev.platform} ({dev.device_kind}); "
        f"Python {platform.python_version()}"
    )


STEP_PRESETS = {"5-way 1-shot": "maml-5w1s", "20-way 5-shot": "maml-20w5s"}


def maml_step_ms(preset: str, data, sampler, tasks: int, repeats: int) -> float:
    """Median ms of one whole compiled MAML meta-training step (sampling included)."""
    import optax

    from mamlx.experiments import build_learner as fewshot_learner
    from mamlx.presets import preset_config
    from mamlx.train import init_state, make_step

    config = preset_config(preset, queries=sampler.queries, meta_batch=tasks)
    learner = fewshot_learner(config)
    opt = optax.adam(1e-3)
    step = jax.jit(make_step(learner, sampler, opt, tasks))
    state = init_state(learner, opt, jax.random.PRNGKey(0))
    state, _ = step(state, data)
    jax.block_until_ready(state)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, _ = step(state, data)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(os.environ.get("MAMLX_DATA_DIR", REPO.parent / "shared" / "data")) / "omniglot"
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument(
        "--step-repeats", type=int, default=3, help="MAML steps timed for the share (0: skip)"
    )
    args = parser.parse_args()

    chars = load_omniglot_npz(args.data)
    split = omniglot_split(chars, "vinyals", seed=0)
    data = jax.device_put(jnp.asarray(split.train))
    rows = []
    for name, ways, shots, queries in SETTINGS:
        sampler = fewshot_sampler(ways, shots, queries, rotate=True)
        r = time_sampling(sampler.sample_batch, data, args.tasks, args.repeats, args.iters)
        r.update(setting=name, ways=ways, shots=shots, queries=queries, tasks=args.tasks)
        if args.step_repeats:
            step_ms = maml_step_ms(STEP_PRESETS[name], data, sampler, args.tasks, args.step_repeats)
            r.update(maml_step_ms=step_ms, share=r["batch_ms"] / step_ms)
            print(f"{name}: MAML step {step_ms:.0f} ms, sampling share {100 * r['share']:.2f}%")
        rows.append(r)
        print(f"{name}: {r['episodes_per_s']:.0f} episodes/s ({r['batch_ms']:.2f} ms per batch)")

    machine = _machine()
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": machine,
        "data": f"Omniglot Vinyals train split: {split.train.shape}, rotate=True "
        f"({split.num_train_classes} classes)",
        "repeats": args.repeats,
        "iters_per_repeat": args.iters,
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(["python", "benchmarks/sampler.py", *sys.argv[1:]]),
    }
    (args.out / "sampler.json").write_text(json.dumps({**meta, "results": rows}, indent=2) + "\n")
    lines = [
        "# Episode sampler throughput (`benchmarks/sampler.py`)",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {machine}.  ",
        f"Data: {meta['data']}, float32 on device.  ",
        f"Batches of {args.tasks} tasks, jitted, compilation and warm-up excluded; median of "
        f"{args.repeats} repeats of {args.iters} batches each. Date: {meta['date']}.",
        "",
        "The share is sampling time over the time of one whole compiled MAML meta-training "
        "step (the preset's inner steps, second order, sampling included) on the same batch.",
        "",
        "| setting | queries/class | ms per batch | episodes/s | compile (s) | MAML step (ms) "
        "| sampling share |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        step = f"{r['maml_step_ms']:.0f} | {100 * r['share']:.2f}%" if "share" in r else "— | —"
        lines.append(
            f"| {r['setting']} | {r['queries']} | {r['batch_ms']:.2f} | "
            f"{r['episodes_per_s']:.0f} | {r['compile_s']:.2f} | {step} |"
        )
    (args.out / "sampler.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / 'sampler.md'}")


if __name__ == "__main__":
    main()
