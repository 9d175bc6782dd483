"""Training time until a run's validation accuracy first reaches a target.

    python benchmarks/time_to_target.py RUN_DIR [--target 0.987] [--compare OTHER_RUN_DIR]

Reads RUN_DIR/metrics.jsonl, whose records each carry the training seconds of their chunk
(``seconds``: the compiled call, validation not counted; the first chunk's includes the
compilation) and, at validation steps, ``val_accuracy``. Prints one line: the first validation at
or above the target, with the step and the training seconds summed up to it, and how much of that
was the first chunk (compilation included) and what the compiled steps alone took; or that the
target was not reached (the best validation, its step, and the training seconds of the whole run).
``benchmarks/gpu_session.sh`` calls it for #24's "98.7 % on Omniglot 5-way 1-shot within 3
minutes".

With ``--compare``, also the paired difference of the two runs' test accuracy (RUN_DIR minus
OTHER_RUN_DIR) from their ``eval.json`` files, which must score the same test tasks (same seed,
same count; ``mamlx eval``'s task i depends only on the seed and i): the mean per-task difference
with a 95 % interval, and on how many tasks the two differ. #24's bfloat16-against-float32 check.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from mamlx.evaluation import mean_ci


def _seconds_per_step(records: list[dict]) -> float | None:
    """Median seconds per step of the chunks after the first (the first one compiles)."""
    rates = [
        r["seconds"] / (r["step"] - prev["step"])
        for prev, r in zip(records, records[1:], strict=False)
        if r["step"] > prev["step"]
    ]
    return statistics.median(rates) if rates else None


def time_to_target(records: list[dict], target: float) -> dict:
    """The first validation at or above ``target`` and the training seconds up to it.

    ``first_chunk`` is the first record's seconds (compilation included); ``steps_only`` the
    seconds up to the same point with the first chunk's steps counted at the later chunks' median
    rate instead, i.e. what the compiled steps alone took (None with a single record).
    """
    if not records:
        raise ValueError("no training records: metrics.jsonl is empty")
    rate = _seconds_per_step(records)
    first = records[0]["seconds"]
    seconds, best = 0.0, None

    def split(total: float) -> dict:
        only = None if rate is None else total - first + records[0]["step"] * rate
        return {"first_chunk": first, "steps_only": only}

    for r in records:
        seconds += r["seconds"]
        if "val_accuracy" not in r:
            continue
        if best is None or r["val_accuracy"] > best["val_accuracy"]:
            best = {"step": r["step"], "val_accuracy": r["val_accuracy"], "seconds": seconds}
        if r["val_accuracy"] >= target:
            return {"reached": True, **best, "target": target, **split(seconds)}
    return {"reached": False, "best": best, "seconds": seconds, "target": target, **split(seconds)}


def paired_difference(a: dict, b: dict) -> dict:
    """Test accuracy of eval ``a`` minus eval ``b``, paired over the same test tasks (percent)."""
    for key in ("seed", "tasks", "ways", "shots", "queries"):
        if a.get(key) != b.get(key):
            raise ValueError(
                f"the two evaluations scored different test tasks: {key} {a.get(key)} vs "
                f"{b.get(key)}; evaluate both with the same --seed and --tasks"
            )
    x, y = a.get("per_task_accuracy"), b.get("per_task_accuracy")
    if not x or not y or len(x) != len(y):
        raise ValueError("eval.json has no per_task_accuracy of the same length in both runs")
    d = [100 * (p - q) for p, q in zip(x, y, strict=True)]
    mean, half = mean_ci(d)
    return {
        "mean": mean,
        "interval": half,
        "tasks": len(d),
        "differing": sum(v != 0 for v in d),
        "steps": (a.get("step"), b.get("step")),
        "accuracy": (100 * a["accuracy"][0], 100 * b["accuracy"][0]),
    }


def describe(result: dict) -> str:
    t = f"{100 * result['target']:.1f} %"
    if result["reached"]:
        return (
            f"validation reached {t} at step {result['step']} "
            f"({100 * result['val_accuracy']:.2f} %) after {result['seconds']:.1f} s of training"
            + _split_text(result)
        )
    best = result["best"]
    tail = (
        f"best validation {100 * best['val_accuracy']:.2f} % at step {best['step']}"
        if best
        else "no validation recorded"
    )
    return (
        f"validation did not reach {t} in {result['seconds']:.1f} s of training ({tail})"
        + _split_text(result)
    )


def _split_text(result: dict) -> str:
    if result.get("steps_only") is None:
        return ""
    return (
        f"; the first chunk (compilation included) took {result['first_chunk']:.1f} s, "
        f"the compiled steps alone {result['steps_only']:.1f} s"
    )


def describe_paired(diff: dict, names: tuple[str, str]) -> str:
    (a, b), (sa, sb) = diff["accuracy"], diff["steps"]
    return (
        f"{names[0]} (step {sa}) {a:.2f} % vs {names[1]} (step {sb}) {b:.2f} % on the same "
        f"{diff['tasks']} test tasks: paired difference {diff['mean']:+.2f} ± "
        f"{diff['interval']:.2f} points (95 %), {diff['differing']} tasks scored differently"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--target", type=float, default=0.987, help="validation accuracy (fraction)")
    p.add_argument(
        "--compare",
        type=Path,
        metavar="OTHER_RUN_DIR",
        help="also the paired test-accuracy difference RUN_DIR minus OTHER_RUN_DIR (eval.json)",
    )
    args = p.parse_args(argv)
    if not 0 < args.target <= 1:
        p.error(f"--target is a fraction in (0, 1], got {args.target}")
    path = args.run_dir / "metrics.jsonl"
    if not path.is_file():
        print(f"error: {path} does not exist", file=sys.stderr)
        return 2
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    try:
        print(f"{args.run_dir}: {describe(time_to_target(records, args.target))}")
        if args.compare:
            evals = []
            for run in (args.run_dir, args.compare):
                if not (run / "eval.json").is_file():
                    raise ValueError(f"{run / 'eval.json'} does not exist: run mamlx eval first")
                evals.append(json.loads((run / "eval.json").read_text()))
            diff = paired_difference(*evals)
            print(describe_paired(diff, (str(args.run_dir), str(args.compare))))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
