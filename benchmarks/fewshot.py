"""Few-shot classification beside the published tables (MAML, first-order MAML, Reptile,
meta-learner LSTM).

Trains and evaluates the chosen presets through the same code as ``mamlx train`` /
``mamlx eval`` and records each run (accuracy ± 95% CI over the preset's 600 test
tasks, wall time, device) in ``results/fewshot.json``; ``results/fewshot.md`` is
regenerated from all recorded runs, next to the published numbers. mini-ImageNet rows
need ``--data-dir`` with the images.

    python benchmarks/fewshot.py --presets fomaml-5w1s-cpu --data-dir ../shared/data/omniglot
    python benchmarks/fewshot.py --presets maml-5w1s --data-dir DIR        # on a GPU
    python benchmarks/fewshot.py --table-only                             # rebuild the table
    python benchmarks/fewshot.py --ablation --data-dir DIR   # MAML++ ablation (benchmarks/ablation.py)

A run stopped early (wall-clock budget) is evaluated and recorded with ``--stopped``: its
best validation checkpoint is evaluated and the row gives the steps actually trained.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ledger  # noqa: E402

from mamlx import published  # noqa: E402
from mamlx._io import atomic_write  # noqa: E402
from mamlx.cli import main as cli  # noqa: E402
from mamlx.presets import PRESETS  # noqa: E402

from common import RESULTS, git_rev, machine  # noqa: E402

#: The presets of this table that train for a published number (the metric learners'
#: are in benchmarks/metric.py); the numbers themselves: mamlx.published.
METRIC = ("protonet", "matching", "relation", "siamese")
PUBLISHED_PRESETS = [p.preset for p in published.PUBLISHED if p.preset and p.method not in METRIC]
STORE = RESULTS / "fewshot.json"


def ledger_presets(path: Path = ledger.LEDGER) -> set[str]:
    """Presets with at least one run in the reproduction ledger."""
    if not Path(path).is_file():
        return set()
    entries = ledger.load(path)["entries"]
    return {run["preset"] for entry in entries for run in entry["runs"] if run.get("preset")}


def load_runs() -> list[dict]:
    return json.loads(STORE.read_text()) if STORE.is_file() else []


def table(runs: list[dict]) -> str:
    lines = [
        "# Few-shot classification: our runs beside the published tables",
        "",
        "Accuracy ± 95% CI over held-out test classes (Omniglot: the 423 test characters of "
        'the 1200/423 split, as drawn), transductive batch norm unless noted. "test rotated": '
        "the same model on the same number of tasks whose classes also include the test "
        "characters' 90-degree rotations (1692 classes), as MAML's reference code and "
        "Prototypical Networks test (`mamlx eval RUN --eval-rotate`). "
        "Regenerate with `python benchmarks/fewshot.py --table-only`.",
        "",
        "| preset | ours (%) | test rotated (%) | published (%) | steps | train wall time | device "
        "| command |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        p = published.for_preset(r["preset"])
        pub_cell = f"{p.number} ({p.source}, {p.table})" if p else "—"
        note = "" if r.get("batch_norm", "transductive") == "transductive" else " (non-transd.)"
        rot = (
            f"{r['accuracy_rotated_test']:.2f} ± {r['ci_rotated_test']:.2f}"
            if "accuracy_rotated_test" in r
            else "—"
        )
        lines.append(
            f"| {r['preset']} | {r['accuracy']:.2f} ± {r['ci']:.2f}{note} | {rot} | {pub_cell} | "
            f"{r['steps']} | {r['wall_s'] / 60:.1f} min | {r['device']} | `{r['command']}` |"
        )
    ran = {published.BASED_ON.get(r["preset"], r["preset"]) for r in runs}
    missing = [p for p in PUBLISHED_PRESETS if p not in ran]
    in_ledger = ledger_presets()
    elsewhere = [p for p in missing if p in in_ledger]
    nowhere = [p for p in missing if p not in in_ledger]
    lines += [""]
    if elsewhere:
        lines += [
            "Run by `benchmarks/reproduce.py`, not by this script (see `reproduction.md`): "
            + ", ".join(elsewhere),
            "",
        ]
    lines += ["Not run yet (published number only): " + (", ".join(nowhere) or "none"), ""]
    notes = [
        f"- {r['preset']} {r.get('flags', '')}".rstrip() + f": {r['note']}"
        for r in runs
        if r.get("note")
    ]
    if notes:
        lines += ["Notes:", "", *notes, ""]
    return "\n".join(lines)


def run_preset(
    preset: str,
    *,
    out: str | Path,
    data_dir: str = "",
    flags: str = "",
    stopped: bool = False,
    name: str = "",
) -> dict:
    """Train a preset with ``mamlx train`` and evaluate it with ``mamlx eval`` (both test
    protocols where the split has rotations): the one path every harness row takes.

    Args:
      preset: a name in :data:`mamlx.presets.PRESETS`.
      out: parent folder of the run directory (``out/preset``).
      data_dir: the data folder (``""``: the run's default).
      flags: more ``mamlx train`` flags, e.g. ``"--max-minutes 20"`` or ``"--steps 300"``.
      stopped: do not train, evaluate the run already there (stopped early).
      name: the run directory's name under ``out`` (default: the preset's).

    Returns:
      The row: accuracy and 95% CI (%), the rotated-test protocol's where it applies,
      per-task accuracies (``per_task``: same tasks for every run of the same test
      protocol), the test tasks' shape, steps trained (and planned), training wall time,
      machine, commit, command and the validation curve (``curve``: step, accuracy %).
    """
    if preset not in PRESETS:
        raise SystemExit(f"unknown preset {preset!r}; available: {sorted(PRESETS)}")
    run_dir = Path(out) / (name or preset)
    cmd = ["train", PRESETS[preset][0], "--preset", preset, "--out", str(run_dir), "--no-progress"]
    cmd += ["--data-dir", data_dir] if data_dir else []
    cmd += shlex.split(flags)
    if not stopped and cli(cmd) != 0:
        raise SystemExit(f"mamlx {' '.join(cmd)} failed")
    config = json.loads((run_dir / "config.json").read_text())
    rotated = None
    if config["task"] == "omniglot" and config["split"] == "vinyals":
        # The same model on the other test protocol too (rotated test classes).
        if cli(["eval", str(run_dir), "--eval-rotate"]) != 0:
            raise SystemExit(f"mamlx eval {run_dir} --eval-rotate failed")
        rotated = json.loads((run_dir / "eval.json").read_text())["accuracy"]
    if cli(["eval", str(run_dir)]) != 0:  # the run's own protocol, left in eval.json
        raise SystemExit(f"mamlx eval {run_dir} failed")
    res = json.loads((run_dir / "eval.json").read_text())
    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    command = "mamlx " + " ".join(cmd)
    if log[-1]["step"] < config["steps"]:
        command += (
            f" (stopped by its wall-clock budget at step {log[-1]['step']} of "
            f"{config['steps']}; best validation checkpoint = step {res['step']})"
        )
    return {
        "preset": preset,
        "flags": flags,
        "accuracy": 100 * res["accuracy"][0],
        "ci": 100 * res["accuracy"][1],
        "eval_rotate": res.get("eval_rotate", False),
        **(
            {"accuracy_rotated_test": 100 * rotated[0], "ci_rotated_test": 100 * rotated[1]}
            if rotated
            else {}
        ),
        "per_task": res["per_task_accuracy"],
        "test_tasks": res["tasks"],
        "test_ways": res["ways"],
        "test_shots": res["shots"],
        "test_queries": config["eval_queries"] or config["queries"],
        "steps": log[-1]["step"],
        "planned_steps": config["steps"],
        "wall_s": sum(r["seconds"] for r in log),
        "device": machine(),
        "commit": git_rev(),
        "batch_norm": res["batch_norm"],
        "command": command,
        "curve": ledger.curve(run_dir),
    }


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--ablation"]:  # MAML against MAML++ and each of its changes
        import ablation

        return ablation.main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="*", default=["fomaml-5w1s-cpu"])
    p.add_argument("--data-dir", default="")
    p.add_argument("--out", default="runs/fewshot")
    p.add_argument("--steps", type=int, help="override the preset's steps (quick look)")
    p.add_argument(
        "--flags",
        default="",
        help="more `mamlx train` flags, recorded with the row, e.g. '--resize nearest --readout mean'",
    )
    p.add_argument("--table-only", action="store_true")
    p.add_argument(
        "--stopped",
        action="store_true",
        help="do not train: evaluate and record the runs already in --out (stopped early)",
    )
    args = p.parse_args(argv)
    runs = load_runs()
    for preset in [] if args.table_only else args.presets:
        flags = args.flags + (f" --steps {args.steps}" if args.steps else "")
        row = run_preset(
            preset, out=args.out, data_dir=args.data_dir, flags=flags, stopped=args.stopped
        )
        row.pop("per_task")
        row["flags"] = args.flags
        ledger.record_row(
            {**row, "flags": flags.strip()}, preset=preset, source="benchmarks/fewshot.py"
        )
        for k in ("curve", "test_ways", "test_shots", "test_queries", "planned_steps"):
            row.pop(k)
        runs = [
            r
            for r in runs
            if not (
                r["preset"] == preset
                and r["device"] == machine()
                and r.get("flags", "") == args.flags
            )
        ]
        runs.append(row)
        with atomic_write(STORE, "w") as f:
            f.write(json.dumps(runs, indent=1) + "\n")
    md = table(runs)
    (RESULTS / "fewshot.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
