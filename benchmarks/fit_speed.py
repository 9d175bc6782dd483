"""``fit`` against a per-step jitted loop: is the one training path also the fastest?

``mamlx.fit`` runs meta-steps in compiled ``lax.scan`` chunks; the alternative is one
jitted step per host call (what ``benchmarks/metric.py`` once did, on the claim that
XLA:CPU runs convolutions inside loops slowly). Both train the same learner, sampler
and optimizer, built from one configuration (:func:`mamlx.experiments.build`), from the
same state, for the same steps; rounds alternate between the two so that drifts in the
machine's speed hit both. Reported: steps/s after compilation (median over rounds) and
the first call's compile-and-run time, and the ratio fit / loop.

    python benchmarks/fit_speed.py --data-dir ../shared/data/omniglot        # 2 CPU cores
    python benchmarks/fit_speed.py --data-dir DIR --chunk 5 --chunks 1 --no-save  # quick look

Writes ``results/fit_speed.{json,md}``. Time it on an idle machine only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mamlx import fit, init_state  # noqa: E402
from mamlx.presets import preset_config  # noqa: E402
from mamlx.runtime import tune_host_allocator  # noqa: E402
from mamlx.train import make_step  # noqa: E402

from common import RESULTS, git_rev, machine  # noqa: E402

#: (name, preset, overrides): a metric learner and a MAML-family learner at CPU settings.
CASES = (
    ("ProtoNet 60-way 1-shot (20w1s CPU preset)", "protonet-20w1s-cpu", {}),
    ("first-order MAML 5-way 1-shot (CPU preset)", "fomaml-5w1s-cpu", {}),
)


def _block(state):
    jax.block_until_ready(state.params)
    return state


def time_fit(exp, state, chunk: int, chunks: int, meta_batch: int) -> list[float]:
    """Seconds of each of ``chunks`` compiled chunks of ``chunk`` steps in one ``fit``
    (the first includes compilation)."""
    seconds: list[float] = []
    _block(
        fit(
            exp.learner,
            exp.sampler,
            exp.optimizer,
            steps=int(state.step) + chunk * chunks,
            meta_batch=meta_batch,
            state=state,
            data=exp.data,
            chunk=chunk,
            checkpoint_every=chunk * chunks,
            progress=False,
            on_chunk=lambda s, rec: seconds.append(rec["seconds"]),
        )
    )
    return seconds


def time_loop(step, state, data, chunk: int, chunks: int) -> list[float]:
    """Seconds of each block of ``chunk`` jitted-step calls (the first includes
    compilation); the loss is read each call, the host round trip a logging loop makes."""
    seconds = []
    for _ in range(chunks):
        t0 = time.perf_counter()
        for _ in range(chunk):
            state, metrics = step(state, data)
            float(metrics["loss"])
        _block(state)
        seconds.append(time.perf_counter() - t0)
    return seconds


def run_case(name: str, preset: str, overrides: dict, args) -> dict:
    from mamlx.experiments import build

    config = preset_config(preset, data_dir=args.data_dir, **overrides)
    exp = build(config)
    state = init_state(exp.learner, exp.optimizer, jax.random.PRNGKey(0))
    first: dict[str, list[float]] = {"fit": [], "loop": []}
    steady: dict[str, list[float]] = {"fit": [], "loop": []}
    for r in range(args.rounds):  # alternate: fit, loop, loop, fit, ...
        for which in ("fit", "loop") if r % 2 == 0 else ("loop", "fit"):
            if which == "fit":
                t = time_fit(exp, state, args.chunk, args.chunks + 1, config.meta_batch)
            else:
                step = jax.jit(
                    make_step(exp.learner, exp.sampler, exp.optimizer, config.meta_batch)
                )
                t = time_loop(step, state, exp.data, args.chunk, args.chunks + 1)
            first[which].append(t[0])
            steady[which].extend(t[1:])
    rate = {k: args.chunk / statistics.median(v) for k, v in steady.items()}
    row = {
        "case": name,
        "preset": preset,
        "chunk": args.chunk,
        "timed_chunks": len(steady["fit"]),
        "fit_steps_per_s": round(rate["fit"], 3),
        "loop_steps_per_s": round(rate["loop"], 3),
        "ratio_fit_over_loop": round(rate["fit"] / rate["loop"], 3),
        "first_chunk_s": {k: [round(x, 1) for x in v] for k, v in first.items()},
        "chunk_s": {k: [round(x, 2) for x in v] for k, v in steady.items()},
    }
    print(json.dumps(row), flush=True)
    return row


def markdown(result: dict) -> str:
    lines = [
        "# `fit` against a per-step jitted loop",
        "",
        f"Machine: {result['machine']}. Commit {result['commit']}. Command: "
        f"`{result['command']}`. Same learner, sampler, optimizer and starting state; "
        "rounds alternate (each a fresh `fit` call or jitted step, compiled anew); steps/s are "
        "medians over the chunks after each round's first.",
        "",
        "| case | fit (steps/s) | per-step loop (steps/s) | fit / loop | first chunk, "
        "compile included: fit / loop (s, per round) |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        f = r["first_chunk_s"]
        lines.append(
            f"| {r['case']} | {r['fit_steps_per_s']:.2f} | {r['loop_steps_per_s']:.2f} | "
            f"{r['ratio_fit_over_loop']:.2f}x | {f['fit']} / {f['loop']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="", help="the Omniglot folder")
    p.add_argument("--chunk", type=int, default=25, help="meta-steps per timed chunk")
    p.add_argument("--chunks", type=int, default=2, help="timed chunks per round (after the first)")
    p.add_argument("--rounds", type=int, default=2, help="rounds per path, alternating")
    p.add_argument("--no-save", action="store_true", help="print only (quick looks)")
    args = p.parse_args(argv)
    tune_host_allocator()  # as the mamlx command does, before JAX starts its threads
    rows = [run_case(*case, args) for case in CASES]
    result = {
        "machine": machine(),
        "commit": git_rev(),
        "command": "python benchmarks/fit_speed.py " + " ".join(argv or sys.argv[1:]),
        "rows": rows,
    }
    md = markdown(result)
    print(md)
    if not args.no_save:
        (RESULTS / "fit_speed.json").write_text(json.dumps(result, indent=1) + "\n")
        (RESULTS / "fit_speed.md").write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
