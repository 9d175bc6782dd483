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
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from mamlx.tasks import fewshot_sampler, load_omniglot_npz, omniglot_split

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
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = jax.devices()[0]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs (load average {load} at the end of the run); "
        f"jax {jax.__version__} on {dev.platform} ({dev.device_kind}); "
        f"Python {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(os.environ.get("MAMLX_DATA_DIR", REPO.parent / "shared" / "data")) / "omniglot"
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()

    chars = load_omniglot_npz(args.data)
    split = omniglot_split(chars, "vinyals", seed=0)
    data = jax.device_put(jnp.asarray(split.train))
    rows = []
    for name, ways, shots, queries in SETTINGS:
        sampler = fewshot_sampler(ways, shots, queries, rotate=True)
        r = time_sampling(sampler.sample_batch, data, args.tasks, args.repeats, args.iters)
        r.update(setting=name, ways=ways, shots=shots, queries=queries, tasks=args.tasks)
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
    }
    (args.out / "sampler.json").write_text(json.dumps({**meta, "results": rows}, indent=2) + "\n")
    lines = [
        "# Episode sampler throughput (`benchmarks/sampler.py`)",
        "",
        f"Machine: {machine}.  ",
        f"Data: {meta['data']}, float32 on device.  ",
        f"Batches of {args.tasks} tasks, jitted, compilation and warm-up excluded; median of "
        f"{args.repeats} repeats of {args.iters} batches each. Date: {meta['date']}.",
        "",
        "| setting | queries/class | ms per batch | episodes/s | compile (s) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['queries']} | {r['batch_ms']:.2f} | "
            f"{r['episodes_per_s']:.0f} | {r['compile_s']:.2f} |"
        )
    (args.out / "sampler.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / 'sampler.md'}")


if __name__ == "__main__":
    main()
