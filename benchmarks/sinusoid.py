"""Reproduce the sine-wave regression results of Finn et al. (2017), Sec. 5.1 / Fig. 2.

Trains MAML and the pre-training baseline with the paper's settings (K = 10, inner lr
0.01, 1 inner step, meta-batch 25, Adam 1e-3, 70,000 steps) and reports query MSE
after 1 / 5 / 10 test-time steps at K = 5, 10, 20 over held-out tasks, beside the
paper's numbers (its 5-shot figure).

    python benchmarks/sinusoid.py            # full settings (~1-3 min on 2 CPU cores)
    python benchmarks/sinusoid.py --steps 5000 --tasks 200   # quick look
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mamlx import SinusoidConfig, build, evaluate, fit, init_state, sinusoid  # noqa: E402

from common import git_rev, machine, write_results  # noqa: E402

PAPER = {  # Finn et al. 2017, MSE at K = 5 after 1 / 5 / 10 steps (read from Fig. 2 / text)
    "maml": {5: (0.67, 0.38, 0.35)},
    "pretrain": {5: (2.41, 2.23, 2.19)},
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=70_000)
    p.add_argument("--tasks", type=int, default=1000, help="held-out tasks per K")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    shots, steps_at = (5, 10, 20), (1, 5, 10)
    results, walls = {}, {}
    for algo in ("maml", "pretrain"):
        config = SinusoidConfig(algo=algo, steps=args.steps, seed=args.seed)
        exp = build(config)
        state = init_state(exp.learner, exp.optimizer, jax.random.PRNGKey(config.seed))
        t0 = time.perf_counter()
        state = fit(
            exp.learner,
            exp.sampler,
            exp.optimizer,
            steps=config.steps,
            meta_batch=config.meta_batch,
            state=state,
            chunk=1000,
            progress=False,
        )
        walls[algo] = time.perf_counter() - t0
        results[algo] = {}
        for k in shots:
            res = evaluate(
                exp.learner,
                state.params,
                sinusoid(k, queries=100),
                key=jax.random.PRNGKey(10_000 + k),
                num_tasks=args.tasks,
                steps=steps_at,
            )
            results[algo][k] = {s: res[s]["loss"] for s in steps_at}
        print(f"{algo}: trained {config.steps} steps in {walls[algo]:.1f} s", flush=True)

    lines = [
        "# Sine-wave regression (Finn et al. 2017, Sec. 5.1)",
        "",
        f"Command: `python benchmarks/sinusoid.py --steps {args.steps} --tasks {args.tasks}`  ",
        f"Machine: {machine()}  ",
        f"Commit: {git_rev()}",
        "",
        f"Query MSE ± 95% CI over {args.tasks} held-out tasks (100 query points each), "
        "after 1 / 5 / 10 SGD steps (lr 0.01).",
        "",
        "| method | K | 1 step | 5 steps | 10 steps | paper (1 / 5 / 10) | train wall time |",
        "|---|---|---|---|---|---|---|",
    ]
    for algo in results:
        for k in shots:
            cells = [f"{m:.3f} ± {c:.3f}" for m, c in (results[algo][k][s] for s in steps_at)]
            paper = PAPER[algo].get(k)
            paper_cell = " / ".join(f"{v:.2f}" for v in paper) if paper else "—"
            lines.append(
                f"| {algo} | {k} | {' | '.join(cells)} | {paper_cell} | {walls[algo]:.0f} s |"
            )
    ratio = {k: results["pretrain"][k][1][0] / results["maml"][k][1][0] for k in shots}
    lines += [
        "",
        "Pre-training MSE / MAML MSE after one step: "
        + ", ".join(f"K={k}: {r:.1f}x" for k, r in ratio.items()),
        "",
    ]
    md = "\n".join(lines)
    print(md)
    data = {
        "steps": args.steps,
        "tasks": args.tasks,
        "machine": machine(),
        "wall_seconds": walls,
        "mse": {
            a: {str(k): {str(s): v for s, v in r.items()} for k, r in res.items()}
            for a, res in results.items()
        },
    }
    write_results("sinusoid", md, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
