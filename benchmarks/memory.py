"""Peak memory and step time of second-order MAML against the number of inner steps.

Compares, on Omniglot-shaped 5-way 1-shot tasks with Conv-4 (meta-batch 8 by
default): plain unrolled MAML, MAML with ``jax.checkpoint`` per inner step
(``remat=True``) and implicit MAML (memory constant in the number of steps). Peak
memory is XLA's own account of the compiled meta-step (temporary buffers plus
arguments and outputs, from ``compiled.memory_analysis()``), so it is exact and
the same on every run; time is the median of repeated compiled steps.

    python benchmarks/memory.py                   # 1, 5, 10, 25, 50 inner steps
    python benchmarks/memory.py --steps 1 5 --repeats 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mamlx import imaml, maml  # noqa: E402
from mamlx.models import model  # noqa: E402
from mamlx.models.conv import default_impl  # noqa: E402
from mamlx.models.conv4 import Conv4  # noqa: E402
from mamlx.tasks import fewshot_sampler  # noqa: E402

from common import git_rev, machine, write_results  # noqa: E402


def measure(learner, params, episodes, repeats):
    step = jax.jit(learner.meta_grad)
    t0 = time.perf_counter()
    compiled = step.lower(params, episodes).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    peak = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
    jax.block_until_ready(compiled(params, episodes))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(params, episodes))
        times.append(time.perf_counter() - t0)
    return peak / 2**20, float(np.median(times)), compile_s


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, nargs="+", default=[1, 5, 10, 25, 50])
    p.add_argument("--meta-batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--filters", type=int, default=64)
    args = p.parse_args(argv)

    apply_fn, init_fn = model(
        lambda rngs: Conv4(
            5,
            in_shape=(28, 28, 1),
            filters=args.filters,
            conv_impl=default_impl(batched_kernels=True),  # as training MAML builds it
            rngs=rngs,
        )
    )
    params = init_fn(jax.random.PRNGKey(0))
    data = jax.random.uniform(jax.random.PRNGKey(1), (50, 20, 28, 28, 1))
    episodes = fewshot_sampler(5, 1, 15).sample_batch(jax.random.PRNGKey(2), data, args.meta_batch)
    variants = {
        "MAML (unrolled)": lambda k: maml(apply_fn, init_fn, inner_lr=0.4, inner_steps=k),
        "MAML + jax.checkpoint": lambda k: maml(
            apply_fn, init_fn, inner_lr=0.4, inner_steps=k, remat=True
        ),
        "iMAML (CG, 5 iters)": lambda k: imaml(apply_fn, init_fn, inner_lr=0.1, inner_steps=k),
    }
    rows, data_out = [], {}
    for name, make in variants.items():
        for k in args.steps:
            peak, t, c = measure(make(k), params, episodes, args.repeats)
            rows.append((name, k, peak, t, c))
            data_out.setdefault(name, {})[k] = {"peak_mib": peak, "step_s": t, "compile_s": c}
            print(f"{name:24s} {k:3d} steps: {peak:9.1f} MiB  {t * 1e3:9.1f} ms/step", flush=True)
    unrolled10 = data_out["MAML (unrolled)"].get(10, {}).get("peak_mib")
    lines = [
        "# Memory of second-order MAML vs inner steps",
        "",
        f"Command: `python benchmarks/memory.py --steps {' '.join(map(str, args.steps))} "
        f"--meta-batch {args.meta_batch}`  ",
        f"Machine: {machine()}  ",
        f"Commit: {git_rev()}",
        "",
        f"Omniglot-shaped 5-way 1-shot, 15 queries per class, Conv-4 ({args.filters} filters, "
        f"stride-2), meta-batch {args.meta_batch}. Peak = XLA's compiled temp + argument + "
        "output bytes of one meta-gradient.",
        "",
        "| variant | inner steps | peak memory (MiB) | step time (ms) | compile (s) |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {n} | {k} | {m:.1f} | {t * 1e3:.1f} | {c:.1f} |" for n, k, m, t, c in rows]
    if unrolled10:
        fits = [
            f"{n} at {k} steps: {m:.0f} MiB ({'within' if m <= unrolled10 else 'above'} "
            f"unrolled 10-step {unrolled10:.0f} MiB)"
            for n, k, m, _, _ in rows
            if k == max(args.steps) and n != "MAML (unrolled)"
        ]
        lines += ["", *fits]
    md = "\n".join(lines) + "\n"
    print(md)
    write_results("memory", md, {"machine": machine(), "results": data_out})
    return 0


if __name__ == "__main__":
    sys.exit(main())
