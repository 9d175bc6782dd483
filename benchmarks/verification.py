"""Verification on Omniglot: Siamese, triplet, SphereFace, CosFace, ArcFace and ProtoNet.

Omniglot stands in for faces: a person is a character, a trial two drawings of the same
(genuine) or of two (impostor) characters. Every learner is trained with ``mamlx train``
for the same wall-clock budget (``--minutes``) on the same episode shape (each step
sees ``ways * (shots + queries)`` images: episodes for ProtoNet and the triplet loss,
pairs for Siamese networks, labelled batches over all 4400 training classes for the
angular-margin losses); its best validation checkpoint is then tested on the SAME
held-out test characters and the SAME trials:

* ROC AUC, equal error rate, TAR at FAR = 1e-2 and 1e-3 (:mod:`mamlx.verification`), each
  with a 95% bootstrap interval; the thresholds are chosen on trials of the validation
  characters and applied to the test trials;
* 5-way and 20-way one-shot accuracy ± 95% CI (:func:`mamlx.evaluate`, same test tasks).

Writes ``results/verification.{json,md}`` and the ROC curves
``results/verification-roc.png`` (``--quick``: ``verification-quick.*``, smoke-level
numbers, never mixed with real ones).

    python benchmarks/verification.py --data-dir ../shared/data/omniglot            # 7 x 20 min
    python benchmarks/verification.py --quick --data-dir ../shared/data/omniglot    # minutes
    python benchmarks/verification.py --reuse --out runs/verification ...           # re-test
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mamlx import registry  # noqa: E402
from mamlx._io import atomic_write  # noqa: E402
from mamlx.evaluation import evaluate  # noqa: E402
from mamlx.runs import load_run, read_config  # noqa: E402
from mamlx.tasks import fewshot_sampler  # noqa: E402
from mamlx.verification import (  # noqa: E402
    roc_curve,
    sample_trials,
    score_trials,
    verification_report,
    verifier,
)

from common import RESULTS, git_rev, machine, write_results  # noqa: E402

#: row name -> the learner's ``mamlx train`` flags (each paper's defaults otherwise).
METHODS = {
    "siamese": "--algo siamese",
    "triplet-semi-hard": "--algo triplet --mining semi_hard",
    "triplet-batch-hard": "--algo triplet --mining batch_hard",
    "sphereface": "--algo sphereface",
    "cosface": "--algo cosface",
    "arcface": "--algo arcface",
    "protonet": "--algo protonet",
}
#: Shared by every row: Snell et al.'s 60-way 1-shot 5-query episodes (360 images a step),
#: Adam 1e-3 halved every 2000 steps, validation on 20-way 1-shot tasks of the validation
#: characters (the best checkpoint is tested), stopped by the wall-clock budget.
COMMON = (
    "--ways 60 --shots 1 --queries 5 --meta-batch 1 --halve-every 2000 --eval-ways 20 "
    "--eval-queries 5 --val-every 500 --val-tasks 200 --steps 1000000"
)
QUICK = (
    "--ways 20 --shots 1 --queries 2 --meta-batch 1 --filters 16 --eval-ways 5 "
    "--eval-queries 5 --val-every 20 --val-tasks 20 --steps 40 --chunk 20"
)
#: Flags after the shared ones, per row. Siamese networks train on ``ways * (shots + queries)``
#: pairs: Koch et al.'s minibatch of 128 (64 x 2). (At 360 pairs the compiled gradient once came
#: out NaN: the max-pool's derivative, fixed since; `python benchmarks/repro_cpu_large_batch.py`.)
AFTER = {"siamese": "--ways 64 --queries 1"}
FARS = (1e-2, 1e-3)
FEWSHOT = ((5, 15), (20, 5))  # (ways, queries per class) of the one-shot test tasks


def train(name: str, flags: str, args, out: Path) -> Path:
    """``mamlx train omniglot`` one row (or reuse the run already there)."""
    run_dir = out / name
    if args.reuse:
        if not (run_dir / "config.json").is_file():
            raise SystemExit(f"--reuse: {run_dir} holds no run")
        return run_dir
    cmd = ["train", "omniglot", *flags.split(), *(QUICK if args.quick else COMMON).split()]
    cmd += [] if args.quick else AFTER.get(name, "").split()
    cmd += ["--out", str(run_dir), "--no-progress", "--max-minutes", str(args.minutes)]
    cmd += ["--data-dir", args.data_dir] if args.data_dir else []
    print("mamlx " + " ".join(cmd), flush=True)
    # One process per row: the compiled programs and buffers of one learner are gone before
    # the next trains (all rows in one process grew past 14 GB and were killed).
    if subprocess.run([sys.executable, "-m", "mamlx.cli", *cmd]).returncode != 0:
        raise SystemExit(f"mamlx {' '.join(cmd)} failed")
    return run_dir


def test_row(name: str, run_dir: Path, splits: dict, trials: dict, args) -> tuple[dict, dict]:
    """Verification and one-shot metrics of a trained run; also its test ROC points."""
    run = load_run(run_dir)  # the best validation checkpoint
    v = verifier(run)
    val_scores, val_labels = score_trials(v, run.params, trials["val"])
    scores, labels = score_trials(v, run.params, trials["test"])
    report = verification_report(
        scores, labels, val_scores, val_labels, fars=FARS, resamples=args.resamples, seed=0
    )
    fewshot = {}
    for ways, queries in FEWSHOT:
        res = evaluate(
            run.learner,
            run.params,
            fewshot_sampler(ways, 1, queries),
            splits["test"],
            key=jax.random.PRNGKey(0),  # the same test tasks for every row
            num_tasks=args.tasks,
            batch_size=20,  # 20-way tasks of 120 images: 100 at once peaked at 12 GB
        )[None]
        fewshot[f"{ways}w1s"] = [100 * x for x in res["accuracy"]]
    log = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    far, tar, _ = roc_curve(scores, labels)
    row = {
        "method": name,
        "algo": run.config.algo,
        "learner": {k: v for k, v in vars(run.config.learner).items()},
        "steps": log[-1]["step"] if log else 0,
        "best_step": run.step,
        "train_s": round(sum(r["seconds"] for r in log), 1),
        **report,
        "fewshot_accuracy": fewshot,
        "command": "mamlx train omniglot "
        + f"{METHODS[name]} {QUICK if args.quick else COMMON + ' ' + AFTER.get(name, '')}"
        + f" --max-minutes {args.minutes}",
    }
    return row, {"far": far.tolist(), "tar": tar.tolist()}


def test_in_subprocess(name: str, run_dir: Path, args) -> tuple[dict, dict]:
    """:func:`test_row` in a process of its own (one row's compiled programs and buffers
    peak at about 12 GB; seven rows in one process were killed), read back from JSON."""
    path = run_dir / "verification-test.json"
    cmd = [sys.executable, __file__, "--test-one", name, "--out", str(run_dir.parent)]
    cmd += ["--trials", str(args.trials), "--tasks", str(args.tasks)]
    cmd += ["--resamples", str(args.resamples), "--minutes", str(args.minutes)]
    cmd += ["--data-dir", args.data_dir] if args.data_dir else []
    cmd += ["--quick"] if args.quick else []
    if subprocess.run(cmd).returncode != 0:
        raise SystemExit(f"testing {name} failed: {' '.join(cmd)}")
    result = json.loads(path.read_text())
    return result["row"], result["roc"]


def trials_and_splits(run_dir: Path, args) -> tuple[dict, dict]:
    """The data splits of a run (every row: same split and seed) and the seeded trials."""
    config = read_config(run_dir)
    if args.data_dir:
        config = dataclasses.replace(config, data_dir=args.data_dir)
    splits = registry.get_dataset(config.task).load(config).splits
    trials = {
        "val": sample_trials(splits["val"], args.trials, seed=1),
        "test": sample_trials(splits["test"], args.trials, seed=2),
    }
    return splits, trials


def markdown(db: dict) -> str:
    fmt = lambda m, scale=1: (
        f"{scale * m['value']:.3f} [{scale * m['ci95'][0]:.3f}, {scale * m['ci95'][1]:.3f}]"
    )
    tar = [f"tar@far={f:g}" for f in FARS]
    lines = [
        f"# Verification on Omniglot ({db['config']})",
        "",
        f"Held-out test characters ({db['test_classes']}), the same "
        f"{db['trials']['test']} trials for every row (half genuine); thresholds for "
        f"TAR@FAR from {db['trials']['val']} trials of the {db['val_classes']} validation "
        "characters. Brackets: 95% bootstrap intervals over trials "
        f"({db['resamples']} resamples; trials sharing characters are not independent, so "
        "they are somewhat narrow). One-shot accuracy (%) ± 95% CI over "
        f"{db['tasks']} test tasks. Each learner trained for {db['minutes']} min of "
        "wall-clock (compilation included) on the same episode shape; its best validation "
        "checkpoint is tested. EER − Siamese's: below zero, the learner separates the same "
        "trials better than the Siamese network. Generated by `benchmarks/verification.py`.",
        "",
        "| method | AUC | EER | EER − Siamese's | "
        + " | ".join(f"TAR@FAR={f:g} (test FAR)" for f in FARS)
        + " | 5-way 1-shot | 20-way 1-shot | steps | best step |",
        "|---|---|---|---|" + "---|" * len(FARS) + "---|---|---|---|",
    ]
    base = next((r["eer"]["value"] for r in db["rows"] if r["method"] == "siamese"), None)
    for r in db["rows"]:
        cells = [fmt(r["auc"]), fmt(r["eer"])]
        delta = r["eer"]["value"] - base if base is not None else None
        cells.append("—" if delta is None or r["method"] == "siamese" else f"{delta:+.3f}")
        cells += [f"{fmt(r[t])} ({r[t]['test_far']:.4f})" for t in tar]
        cells += [f"{a:.2f} ± {c:.2f}" for a, c in r["fewshot_accuracy"].values()]
        lines.append(
            f"| {r['method']} | " + " | ".join(cells) + f" | {r['steps']} | {r['best_step']} |"
        )
    lines += [
        "",
        f"Machine: {db['machine']}. Commit: {db['commit']}.",
        "",
        f"Command: `{db['command']}`",
        "",
        "Per-row training commands:",
        "",
        *[f"- {r['method']}: `{r['command']}`" for r in db["rows"]],
        "",
    ]
    return "\n".join(lines)


def roc_figure(curves: dict, path: Path) -> str:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return "matplotlib is not installed: no ROC figure (pip install matplotlib)"
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    for name, c in curves.items():
        ax.plot(np.maximum(np.asarray(c["far"]), 1e-5), c["tar"], label=name)
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_xlabel("false accept rate (test impostor trials)")
    ax.set_ylabel("true accept rate")
    ax.set_title("Omniglot verification, held-out characters")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return f"wrote {path}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="", help="the Omniglot folder (default: the run's)")
    p.add_argument("--minutes", type=float, default=20.0, help="training budget per learner")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated rows")
    p.add_argument("--out", default="", help="parent folder of the run directories")
    p.add_argument("--trials", type=int, default=10_000, help="trials per split (val, test)")
    p.add_argument("--tasks", type=int, default=1000, help="one-shot test tasks per setting")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--quick", action="store_true", help="tiny budget and few trials (smoke)")
    p.add_argument("--reuse", action="store_true", help="test the runs in --out, no training")
    p.add_argument("--test-one", default="", help=argparse.SUPPRESS)  # internal: one row
    p.add_argument("--render", action="store_true", help="rewrite the .md from the .json only")
    args = p.parse_args(argv)
    if args.render:
        name = "verification-quick" if args.quick else "verification"
        db = json.loads((RESULTS / f"{name}.json").read_text())
        print(f"wrote {write_results(name, markdown(db), db)}")
        return 0
    if args.quick:
        args.minutes = min(args.minutes, 0.2)
        args.trials, args.tasks, args.resamples = 400, 50, 100
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; known: {list(METHODS)}")
    out = Path(
        args.out or (tempfile.mkdtemp(prefix="verif-") if args.quick else "runs/verification")
    )
    if args.test_one:
        run_dir = out / args.test_one
        splits, trials = trials_and_splits(run_dir, args)
        row, roc = test_row(args.test_one, run_dir, splits, trials, args)
        with atomic_write(run_dir / "verification-test.json", "w") as f:
            json.dump({"row": row, "roc": roc}, f)
        return 0
    t0 = time.perf_counter()
    runs = {m: train(m, METHODS[m], args, out) for m in methods}
    splits, _ = trials_and_splits(runs[methods[0]], args)
    rows, curves = [], {}
    for m in methods:
        row, curves[m] = test_in_subprocess(m, runs[m], args)
        rows.append(row)
        print(
            f"{m}: AUC {row['auc']['value']:.4f}, EER {row['eer']['value']:.4f}, "
            + ", ".join(f"TAR@FAR={f:g} {row[f'tar@far={f:g}']['value']:.4f}" for f in FARS)
            + ", "
            + ", ".join(f"{k} {a:.2f} ± {c:.2f}%" for k, (a, c) in row["fewshot_accuracy"].items())
            + f" ({row['steps']} steps)",
            flush=True,
        )
    name = "verification-quick" if args.quick else "verification"
    db = {
        "config": "quick: smoke-level, not results" if args.quick else "full",
        "minutes": args.minutes,
        "trials": {"val": args.trials, "test": args.trials},
        "tasks": args.tasks,
        "resamples": args.resamples,
        "val_classes": int(splits["val"].shape[0]),
        "test_classes": int(splits["test"].shape[0]),
        "machine": f"{machine()}; {platform.platform()}, os.cpu_count()={os.cpu_count()}",
        "commit": git_rev(),
        "command": "python benchmarks/verification.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "wall_s": round(time.perf_counter() - t0, 1),
        "rows": rows,
    }
    path = write_results(name, markdown(db), db)
    print(f"wrote {path} and {path.with_suffix('.json')}")
    print(roc_figure(curves, RESULTS / f"{name}-roc.png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
