"""The course's central contrast on real data: "performance now" against "performance after
training".

On Omniglot 5-way 1-shot and 20-way 1-shot, trains (each for the same wall-clock budget,
through ``mamlx train``) MAML, first-order MAML, episodic pre-training (the loss at φ
itself, the course's "find φ that performs well now"), the transfer baseline (one
classifier over all 4,400 training classes; at test time a fine-tuned linear head or
nearest neighbour), Baseline++ (the same with a cosine head) and ProtoNet, then tests
every one on the *same* test tasks after 0, 1, 3, 10 and 50 test-time steps where steps
apply, with paired 95% intervals against MAML. Writes ``results/contrast.{json,md,png}``.

    python benchmarks/contrast.py --data-dir ../shared/data/omniglot --minutes 4
    python benchmarks/contrast.py --quick --data-dir ../shared/data/omniglot   # smoke run

The transfer runs and ProtoNet (trained on 60-way episodes, as Snell et al.) do not depend
on the number of ways and are trained once for both settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import jax  # noqa: E402

from mamlx.cli import main as cli  # noqa: E402
from mamlx.config import FewShotConfig  # noqa: E402
from mamlx.evaluation import make_evaluator, mean_ci  # noqa: E402
from mamlx.runs import load_run  # noqa: E402
from mamlx.tasks import fewshot_sampler  # noqa: E402

from common import RESULTS, git_rev, machine, write_results  # noqa: E402

STEPS = (0, 1, 3, 10, 50)
SETTINGS = {"5w1s": (5, 15), "20w1s": (20, 5)}  # ways, test queries per class (Snell et al.)

# name -> (training flags by setting (None: one run for every setting), test rules)
# A test rule is (label, learner overrides, whether test-time steps apply).
METHODS = {
    "maml": (
        lambda ways: ["--preset", f"maml-{ways}w1s"],
        [("MAML", {}, True)],
    ),
    "fomaml": (
        lambda ways: ["--preset", f"maml-{ways}w1s", "--algo", "fomaml"],
        [("first-order MAML", {}, True)],
    ),
    "pretrain": (
        lambda ways: ["--preset", f"maml-{ways}w1s", "--algo", "pretrain"],
        [("episodic pre-training", {}, True)],
    ),
    "transfer": (
        None,
        [
            ("transfer, fine-tuned head", {}, True),
            ("transfer, nearest neighbour", {"test_rule": "nn"}, False),
        ],
    ),
    "baseline++": (
        None,
        [("Baseline++ (cosine head)", {}, True)],
    ),
    "protonet": (
        None,
        [("ProtoNet", {}, False)],
    ),
}
SHARED_FLAGS = {
    "transfer": ["--algo", "transfer", "--meta-batch", "1", "--steps", "1000000"],
    "baseline++": ["--algo", "transfer", "--head", "cosine", "--meta-batch", "1"]
    + ["--steps", "1000000"],
    "protonet": ["--preset", "protonet-20w1s", "--steps", "1000000"],
}


def train(name: str, flags: list[str], args) -> Path:
    """Train one method for the wall-clock budget (``mamlx train``), unless already there."""
    run_dir = Path(args.out) / name
    if (run_dir / "config.json").exists() and args.reuse:
        return run_dir
    cmd = ["train", "omniglot", *flags, "--out", str(run_dir), "--no-progress"]
    cmd += ["--max-minutes", str(args.minutes), "--val-every", "1000000"]
    cmd += ["--data-dir", args.data_dir] if args.data_dir else []
    if args.quick:
        cmd += ["--filters", "8"]
    print("mamlx", " ".join(cmd), flush=True)
    if cli(cmd) != 0:
        raise SystemExit(f"mamlx {' '.join(cmd)} failed")
    return run_dir


def test_split(args):
    """The Omniglot test characters (the Vinyals split of every run here)."""
    from mamlx.experiments import build

    return build(FewShotConfig(algo="protonet", data_dir=args.data_dir)).splits["test"]


def evaluate_rule(run_dir: Path, overrides: dict, with_steps: bool, ways, queries, data, args):
    """Per-task accuracies ``{steps: array}`` of a trained run under one test rule."""
    run = load_run(run_dir, best=False)
    learner = run.learner
    if overrides:
        from mamlx.experiments import build_learner

        learner = build_learner(dataclasses.replace(run.config, **overrides))
    steps = [s for s in args.steps] if with_steps else [None]
    sampler = fewshot_sampler(ways, 1, queries)
    evaluator = make_evaluator(learner, sampler, steps=steps, batch_size=50)
    res = evaluator(
        run.params, data, key=jax.random.PRNGKey(args.seed), num_tasks=args.tasks, per_task=True
    )
    return {s: np.asarray(v["accuracy"]) for s, v in res.items()}, run.step


def paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean and 95% interval (%) of the per-task difference ``a − b`` (same tasks)."""
    m, ci = mean_ci(a - b)
    return 100 * m, 100 * ci


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# The contrast on Omniglot: MAML against pre-training and transfer baselines",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}; commit {meta['commit']}; {meta['date']}.  ",
        f"Each method trained for {meta['minutes']} min of wall clock (`mamlx train "
        f"--max-minutes`), then tested on the same {meta['tasks']} test tasks per setting "
        f"(1 shot; 15 queries per class at 5 ways, 5 at 20), after k test-time steps. "
        "Accuracy % ± 95% interval; Δ = paired difference to MAML at the same k (rows without "
        "steps: to MAML's best k), over the same tasks.",
        "",
    ]
    for setting in (s for s in SETTINGS if any(r["setting"] == s for r in rows)):
        lines += [f"## {setting}", "", "| method | trained steps | k | accuracy | Δ vs MAML |"]
        lines += ["|---|---|---|---|---|"]
        for r in (r for r in rows if r["setting"] == setting):
            for k, (acc, ci) in r["accuracy"].items():
                d, dci = r["delta"][k]
                delta = "—" if r["label"] == "MAML" else f"{d:+.2f} ± {dci:.2f}"
                lines.append(
                    f"| {r['label']} | {r['trained_steps']} | {k} | {acc:.2f} ± {ci:.2f} | {delta} |"
                )
        lines.append("")
    lines += ["## Who wins at each k", ""] + [f"- {w}" for w in meta["winners"]] + [""]
    return "\n".join(lines)


def winners(rows: list[dict]) -> list[str]:
    out = []
    for setting in SETTINGS:
        for k in ["none", *map(str, STEPS)]:
            at_k = [
                (r["accuracy"][k][0], r["label"])
                for r in rows
                if r["setting"] == setting and k in r["accuracy"]
            ]
            if not at_k:
                continue
            best = max(at_k)
            what = "without test-time steps" if k == "none" else f"after {k} steps"
            out.append(f"{setting}, {what}: {best[1]} ({best[0]:.2f}%)")
    return out


def figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = [s for s in SETTINGS if any(r["setting"] == s for r in rows)]
    fig, axes = plt.subplots(1, len(settings), figsize=(5.5 * len(settings), 4), squeeze=False)
    axes = axes[0]
    for ax, setting in zip(axes, settings, strict=True):
        for r in (r for r in rows if r["setting"] == setting):
            acc = r["accuracy"]
            if "none" in acc:
                ax.axhline(acc["none"][0], ls="--", lw=1, label=r["label"], color=None)
                continue
            ks = [int(k) for k in acc]
            ax.errorbar(
                [k + 0.5 for k in ks],
                [acc[str(k)][0] for k in ks],
                yerr=[acc[str(k)][1] for k in ks],
                marker="o",
                capsize=2,
                label=r["label"],
            )
        ax.set_xscale("log")
        ax.set_xticks([k + 0.5 for k in STEPS], [str(k) for k in STEPS])
        ax.set_xlabel("test-time steps on the support set")
        ax.set_ylabel("query accuracy (%)")
        ax.set_title(f"Omniglot {setting}: performance now (0) vs after training")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="", help="Omniglot folder (default: the cache)")
    p.add_argument("--out", default="runs/contrast", help="parent folder of the runs")
    p.add_argument("--minutes", type=float, default=4.0, help="training budget per method")
    p.add_argument("--tasks", type=int, default=600, help="test tasks per setting")
    p.add_argument("--seed", type=int, default=12345, help="seed of the test tasks")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--reuse", action="store_true", help="evaluate runs already in --out")
    p.add_argument("--quick", action="store_true", help="smoke run: seconds of training")
    args = p.parse_args(argv)
    args.steps = STEPS
    if args.quick:
        args.minutes, args.tasks, args.steps = 0.05, 10, (0, 1, 3)
    start = time.strftime("%Y-%m-%d %H:%M")
    runs: dict[tuple[str, str], Path] = {}
    for name in args.methods:
        flags_of, _ = METHODS[name]
        for setting in args.settings:
            ways = SETTINGS[setting][0]
            if flags_of is None:
                if (name, "shared") not in runs:
                    runs[name, "shared"] = train(name, SHARED_FLAGS[name], args)
                runs[name, setting] = runs[name, "shared"]
            else:
                runs[name, setting] = train(f"{name}-{setting}", flags_of(ways), args)

    data = test_split(args)
    rows = []
    for setting in args.settings:
        ways, queries = SETTINGS[setting]
        for name in args.methods:
            for label, overrides, with_steps in METHODS[name][1]:
                accs, step = evaluate_rule(
                    runs[name, setting], overrides, with_steps, ways, queries, data, args
                )
                print(
                    f"{setting} {label}: "
                    + ", ".join(f"k={k}: {100 * a.mean():.2f}" for k, a in accs.items()),
                    flush=True,
                )
                rows.append(dict(setting=setting, label=label, trained_steps=step, per_task=accs))
    for setting in args.settings:
        base = next((r for r in rows if r["setting"] == setting and r["label"] == "MAML"), None)
        for r in (r for r in rows if r["setting"] == setting):
            r["accuracy"], r["delta"] = {}, {}
            for k, a in r["per_task"].items():
                key = "none" if k is None else str(k)
                m, ci = mean_ci(a)
                r["accuracy"][key] = (100 * m, 100 * ci)
                if base is not None:
                    ref = base["per_task"].get(k)
                    if ref is None:  # no steps: against MAML's best step count
                        ref = max(base["per_task"].values(), key=np.mean)
                    r["delta"][key] = paired(a, ref)
                else:
                    r["delta"][key] = (float("nan"), float("nan"))
    for r in rows:
        r["per_task"] = {str(k): v.tolist() for k, v in r["per_task"].items()}
    meta = dict(
        command="python benchmarks/contrast.py " + " ".join(argv or sys.argv[1:]),
        machine=machine(),
        commit=git_rev(),
        date=start,
        minutes=args.minutes,
        tasks=args.tasks,
    )
    name = "contrast_quick" if args.quick else "contrast"
    previous = RESULTS / f"{name}.json"
    if previous.exists():  # keep the recorded rows of the settings not run this time
        kept = json.loads(previous.read_text())["rows"]
        rows = [r for r in kept if r["setting"] not in args.settings] + rows
    meta["winners"] = winners(rows)
    path = write_results(name, markdown(rows, meta), {"meta": meta, "rows": rows})
    try:
        figure(rows, RESULTS / f"{name}.png")
    except ImportError:
        print("matplotlib is not installed: no figure")
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
