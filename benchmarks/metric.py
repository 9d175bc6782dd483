"""Metric-based few-shot learners on Omniglot beside the published numbers.

Rows: Prototypical Networks (Snell et al. 2017), Matching Networks (Vinyals et
al. 2016), Relation Networks (Sung et al. 2018) and Siamese networks (Koch et
al. 2015) on Omniglot 5-way/20-way 1-shot/5-shot, plus mini-ImageNet
"needs images" rows, and the gain of hallucinated examples (Wang et al. 2018)
at 1 and 2 shots, measured on the *same* test tasks with a paired 95% CI.
Writes ``benchmarks/results/metric.{md,json}``.

Every row is one preset of :mod:`mamlx.presets` trained with ``mamlx train`` and
evaluated with ``mamlx eval`` through :func:`fewshot.run_preset`, the same path as
``benchmarks/fewshot.py`` (run directories under ``--out``, kept for ``mamlx eval``):

* paper: the papers' settings (``protonet-20w1s`` ...), each citing its source. Far
  beyond a CPU budget; for accelerators, or with ``--minutes``.
* ``--cpu``: ``protonet-20w1s-cpu``, ProtoNet 20-way 1-shot on 2 CPU cores (60-way
  training episodes, Adam 1e-3 halved every 2000 steps), stopped at ``--minutes``.
* ``--quick``: the same presets with a small Conv-4 (16 filters) and 300 steps, 200
  test tasks; minutes on a laptop. The figures are smoke-level, not reproductions.

Usage::

    python benchmarks/metric.py --cpu --minutes 20 --data-dir ../shared/data/omniglot
    python benchmarks/metric.py --quick --hallucination --data-dir DIR
    python benchmarks/metric.py --quick --table --data-dir DIR        # all Omniglot rows, quick
    python benchmarks/metric.py --table --data-dir DIR                # paper settings

Results from several invocations are merged into ``results/metric.json`` (keyed
by row) and the markdown table is regenerated from it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ledger  # noqa: E402
from fewshot import run_preset  # noqa: E402

from mamlx import published  # noqa: E402
from mamlx._io import atomic_write  # noqa: E402
from mamlx.evaluation import mean_ci  # noqa: E402

from common import RESULTS  # noqa: E402

SETTINGS = ((5, 1), (5, 5), (20, 1), (20, 5))
QUICK = "--filters 16 --steps 300 --eval-tasks 200 --halve-every 0"


def _published(method: str, dataset: str, settings) -> tuple[tuple[float, ...], str]:
    """The published accuracies (%) of ``method`` in ``settings`` and their source, from
    :data:`mamlx.published.PUBLISHED` (the one table of published numbers)."""
    rows = [published.find(method, dataset, ways, shots) for ways, shots in settings]
    return tuple(p.mean for p in rows), f"{rows[0].source}, {rows[0].table}"


#: Published Omniglot accuracies (%) for 5w1s, 5w5s, 20w1s, 20w5s.
PUBLISHED_OMNIGLOT = {
    m: _published(m, "omniglot", SETTINGS) for m in ("protonet", "matching", "relation", "siamese")
}
#: Published mini-ImageNet 5-way accuracies (%) for 1-shot, 5-shot.
PUBLISHED_MINIIMAGENET = {
    m: _published(m, "miniimagenet", ((5, 1), (5, 5))) for m in ("protonet", "matching", "relation")
}


def metric_row(method: str, ways: int, shots: int, label: str, args) -> dict:
    """Train and evaluate one Omniglot row through :func:`fewshot.run_preset`."""
    preset = "protonet-20w1s-cpu" if label == "cpu" else f"{method}-{ways}w{shots}s"
    flags = QUICK + (" --ways 20" if method == "protonet" else "") if label == "quick" else ""
    flags += f" --max-minutes {args.minutes}" if args.minutes else ""
    r = run_preset(
        preset, out=args.out, data_dir=args.data_dir, flags=flags.strip(), name=f"{preset}-{label}"
    )
    if label != "quick":  # smoke-level settings are not results
        ledger.record_row(
            {**r, "flags": flags.strip()}, preset=preset, source="benchmarks/metric.py"
        )
    return {
        "method": method,
        "setting": f"{ways}w{shots}s",
        "config": label,
        "accuracy": r["accuracy"],
        "ci95": r["ci"],
        **(
            {
                "accuracy_rotated_test": r["accuracy_rotated_test"],
                "ci95_rotated_test": r["ci_rotated_test"],
            }
            if "accuracy_rotated_test" in r
            else {}
        ),
        "steps": r["steps"],
        "train_s": round(r["wall_s"], 1),
        "test_tasks": r["test_tasks"],
        "preset": preset,
        "machine": r["device"],
        "command": r["command"],
    }


def hallucination_gain(args, num_hallucinated: int = 3) -> list[dict]:
    """ProtoNet with and without hallucination at 1 and 2 shots: 20-way training, 5-way
    test on the same test tasks (``mamlx eval``'s seed), paired 95% interval of the gain."""
    quick = args.quick
    rows = []
    for shots in (1, 2):
        common = (
            f"--ways 20 --shots {shots} --queries 5 --eval-ways 5 --eval-queries 15 "
            + (
                QUICK.replace("--eval-tasks 200", "--eval-tasks 300")
                if quick
                else "--steps 5000 --eval-tasks 1000"
            )
            + (f" --max-minutes {args.minutes}" if args.minutes else "")
        )
        runs = {}
        for m in (0, num_hallucinated):
            algo = f"--algo hallucination --num-hallucinated {m}" if m else ""
            runs[m] = run_preset(
                "protonet-5w1s",
                out=args.out,
                data_dir=args.data_dir,
                flags=f"{common} {algo}".strip(),
                name=f"hallucination-{shots}s-m{m}{'-quick' if quick else ''}",
            )
        base = np.asarray(runs[0]["per_task"])
        hall = np.asarray(runs[num_hallucinated]["per_task"])
        rows.append(
            {
                "shots": shots,
                "num_hallucinated": num_hallucinated,
                "steps": runs[0]["steps"],
                "protonet": mean_ci(100 * base),
                "hallucination": mean_ci(100 * hall),
                "gain": mean_ci(100 * (hall - base)),
                "train_s": [round(runs[m]["wall_s"], 1) for m in runs],
                "config": "quick" if quick else "full",
                "machine": runs[0]["device"],
                "command": " ; ".join(r["command"] for r in runs.values()),
            }
        )
        print(rows[-1])
    return rows


def write_markdown(db: dict) -> str:
    lines = [
        "# Metric-based learners on Omniglot",
        "",
        "Accuracy (%) ± 95% CI over test tasks on the 423 held-out characters of the "
        "Vinyals split (28x28); published numbers beside. Generated by "
        '`benchmarks/metric.py`; a `-` means not run. "ours" samples the test characters '
        'as drawn; "test rotated" (same trained model, same number of tasks) also counts '
        "their 90-degree rotations as classes, 1692 in all, as Snell et al. 2017 test "
        '("the remaining classes, including rotations, for test").',
        "",
        "| method | setting | ours | test rotated | published | config | steps | train time "
        "| machine |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method, (pub, src) in PUBLISHED_OMNIGLOT.items():
        for (ways, shots), ref in zip(SETTINGS, pub, strict=True):
            rows = [
                r
                for r in db["rows"].values()
                if r["method"] == method and r["setting"] == f"{ways}w{shots}s"
            ]
            if not rows:
                lines.append(
                    f"| {method} | {ways}w{shots}s | - | - | {ref} ({src}) | - | - | - | - |"
                )
            for r in rows:
                rot = (
                    f"{r['accuracy_rotated_test']:.1f} ± {r['ci95_rotated_test']:.1f}"
                    if "accuracy_rotated_test" in r
                    else "-"
                )
                lines.append(
                    f"| {method} | {ways}w{shots}s | {r['accuracy']:.1f} ± {r['ci95']:.1f} | {rot} "
                    f"| {ref} ({src}) "
                    f"| {r['config']} | {r['steps']} | {r['train_s'] / 60:.1f} min | {r['machine']} |"
                )
    lines += [
        "",
        "## mini-ImageNet (5-way): needs images",
        "",
        "| method | 1-shot | 5-shot | source |",
        "| --- | --- | --- | --- |",
    ]
    for method, ((one, five), src) in PUBLISHED_MINIIMAGENET.items():
        lines.append(
            f"| {method} | needs images (published {one}) | needs images (published {five}) | {src} |"
        )
    lines += [
        "",
        "## Hallucination gain (Wang et al. 2018), 5-way test, same test tasks",
        "",
        "| shots | M | ProtoNet | + hallucination | paired gain | steps | config | train time (s) | machine |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in db.get("hallucination", []):
        f = lambda mc: f"{mc[0]:.1f} ± {mc[1]:.1f}"
        lines.append(
            f"| {r['shots']} | {r['num_hallucinated']} | {f(r['protonet'])} | {f(r['hallucination'])} "
            f"| {f(r['gain'])} | {r['steps']} | {r['config']} | {r['train_s']} | {r['machine']} |"
        )
    runs = [
        *db["rows"].items(),
        *((f"hallucination {r['shots']}-shot", r) for r in db.get("hallucination", [])),
    ]
    lines += ["", "## Commands", ""]
    for name, r in runs:
        cmd = r.get("command")
        lines.append(
            f"- {name}: `{cmd}`"
            if cmd
            else f"- {name}: not recorded (an older version of the script)"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small smoke-level settings")
    ap.add_argument("--cpu", action="store_true", help="the CPU configuration: ProtoNet 20w1s")
    ap.add_argument("--table", action="store_true", help="all Omniglot rows of --methods")
    ap.add_argument("--methods", default="protonet,matching,relation,siamese")
    ap.add_argument(
        "--hallucination", action="store_true", help="hallucination gain at 1 and 2 shots"
    )
    ap.add_argument("--minutes", type=float, default=None, help="training time budget per row")
    ap.add_argument("--data-dir", default="", help="the Omniglot folder (default: the run's)")
    ap.add_argument("--out", default="runs/metric", help="parent folder of the run directories")
    args = ap.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "metric.json"
    db = json.loads(path.read_text()) if path.is_file() else {"rows": {}, "hallucination": []}

    def save():
        with atomic_write(path, "w") as f:
            f.write(json.dumps(db, indent=1))
        (RESULTS / "metric.md").write_text(write_markdown(db))

    if args.cpu:
        r = metric_row("protonet", 20, 1, "cpu", args)
        db["rows"]["protonet/20w1s/cpu"] = r
        print(r)
        save()
    if args.table:
        label = "quick" if args.quick else "paper"
        for method in args.methods.split(","):
            for ways, shots in SETTINGS:
                r = metric_row(method, ways, shots, label, args)
                db["rows"][f"{method}/{ways}w{shots}s/{label}"] = r
                print(r)
                save()
    if args.hallucination:
        db["hallucination"] = hallucination_gain(args)
        save()
    save()


if __name__ == "__main__":
    main()
