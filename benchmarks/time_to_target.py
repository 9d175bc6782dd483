"""Training time until a run's validation accuracy first reaches a target.

    python benchmarks/time_to_target.py RUN_DIR [--target 0.987]

Reads RUN_DIR/metrics.jsonl, whose records each carry the training seconds of their chunk
(``seconds``: compiled steps only, validation not counted) and, at validation steps,
``val_accuracy``. Prints one line: the first validation at or above the target, with the step and
the training seconds summed up to it, or that the target was not reached (the best validation,
its step, and the training seconds of the whole run). ``benchmarks/gpu_session.sh`` calls it for
#24's "98.7 % on Omniglot 5-way 1-shot within 3 minutes".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def time_to_target(records: list[dict], target: float) -> dict:
    """The first validation at or above ``target`` and the training seconds up to it."""
    seconds, best = 0.0, None
    for r in records:
        seconds += r["seconds"]
        if "val_accuracy" not in r:
            continue
        if best is None or r["val_accuracy"] > best["val_accuracy"]:
            best = {"step": r["step"], "val_accuracy": r["val_accuracy"], "seconds": seconds}
        if r["val_accuracy"] >= target:
            return {"reached": True, **best, "target": target}
    return {"reached": False, "best": best, "seconds": seconds, "target": target}


def describe(result: dict) -> str:
    t = f"{100 * result['target']:.1f} %"
    if result["reached"]:
        return (
            f"validation reached {t} at step {result['step']} "
            f"({100 * result['val_accuracy']:.2f} %) after {result['seconds']:.1f} s of training"
        )
    best = result["best"]
    tail = (
        f"best validation {100 * best['val_accuracy']:.2f} % at step {best['step']}"
        if best
        else "no validation recorded"
    )
    return f"validation did not reach {t} in {result['seconds']:.1f} s of training ({tail})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--target", type=float, default=0.987, help="validation accuracy (fraction)")
    args = p.parse_args(argv)
    if not 0 < args.target <= 1:
        p.error(f"--target is a fraction in (0, 1], got {args.target}")
    path = args.run_dir / "metrics.jsonl"
    if not path.is_file():
        print(f"error: {path} does not exist", file=sys.stderr)
        return 2
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    print(f"{args.run_dir}: {describe(time_to_target(records, args.target))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
