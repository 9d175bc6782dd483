"""Reproduce the published Omniglot table row by row, each row one preset, into the ledger.

Every row trains one preset of :mod:`mamlx.presets` with ``mamlx train`` in its own process,
stopped by a wall-clock budget, evaluates its best validation checkpoint with ``mamlx eval``
at the paper's test protocol (600 test tasks at 5 ways, 1000 at 20, the preset's queries per
class; on the Vinyals split both as drawn and with the test characters' rotations as
classes) and records the run, with its validation curve, in
``results/reproduction.json`` (``benchmarks/ledger.py``).

    python benchmarks/reproduce.py --rows cpu --data-dir ../shared/data/omniglot   # all CPU rows
    python benchmarks/reproduce.py --rows protonet-5w1s,matching-5w1s --minutes 45
    python benchmarks/reproduce.py --gpu --budget-minutes 10      # the accelerator rows at once
    python benchmarks/reproduce.py --gpu --dry-run                # print the plan only
    python benchmarks/reproduce.py --rows maml-noconv-5w1s --tiny --out /tmp/r --ledger /tmp/l.json

``--gpu`` starts the accelerator rows (second-order MAML 5w5s, 20w1s, 20w5s; Reptile
20-way) together on one device, each with its share of the device memory, so training,
evaluation and start-up fit in ``--budget-minutes`` of device time; a row cut short by the
budget is evaluated at its best checkpoint and recorded as partial (steps trained of the
preset's, and its curve). ``--tiny`` runs the same path with a 2-step, 8-filter network and
8 test tasks (the test of this script); its rows are smoke-level, keep them out of the
repository's ledger (``--ledger``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ledger  # noqa: E402

from mamlx.presets import PRESETS  # noqa: E402
from mamlx.published import for_preset  # noqa: E402

from common import git_rev, machine  # noqa: E402

#: The CPU rows of the Omniglot table and their training budgets (minutes, 2 CPU cores).
CPU_ROWS: dict[str, int] = {
    **{f"protonet-{s}": 45 for s in ("5w1s", "5w5s", "20w5s")},
    **{f"{m}-{s}": 45 for m in ("matching", "relation", "siamese") for s in ("5w1s", "5w5s")},
    **{f"{m}-{s}": 45 for m in ("matching", "relation", "siamese") for s in ("20w1s", "20w5s")},
    "reptile-5w1s": 45,
    "reptile-5w5s": 45,
    "fomaml-5w5s": 45,
    "maml-noconv-5w1s": 45,
    "maml-noconv-5w5s": 45,
}
#: The accelerator rows, run together by ``--gpu`` within one budget of device time.
GPU_ROWS: tuple[str, ...] = (
    "maml-5w5s",
    "maml-20w1s",
    "maml-20w5s",
    "reptile-20w1s",
    "reptile-20w5s",
)
#: Training flags of ``--tiny`` (on top of the preset's): a smoke run of the same path.
TINY = "--steps 2 --meta-batch 2 --filters 8 --val-every 1 --val-tasks 4 --checkpoint-every 1"
TINY_TASKS = 8
# Device time that is not training, in --gpu mode: start-up and compilation, evaluation.
START_MIN, EVAL_MIN = 1.5, 2.0
#: More training flags in --gpu mode: validate often, so a partial row has a curve.
GPU_FLAGS = "--val-every 500"


def row_flags(minutes: float, args) -> str:
    """The flags that make a row's run differ from the preset (its ledger id has them)."""
    gpu = GPU_FLAGS if args.gpu and not args.tiny else ""
    flags = (f"--max-minutes {minutes:g}", gpu, TINY if args.tiny else "", args.flags)
    return " ".join(x for x in flags if x)


def train_command(name: str, run_dir: Path, minutes: float, args) -> list[str]:
    """``mamlx train DATASET --preset NAME --out RUN --data-dir D --max-minutes M ...``."""
    cmd = ["train", PRESETS[name][0], "--preset", name, "--out", str(run_dir), "--no-progress"]
    cmd += ["--data-dir", args.data_dir] if args.data_dir else []
    return cmd + shlex.split(row_flags(minutes, args))


#: Configuration fields of the test protocol: presets that differ only in these train alike.
TEST_FIELDS = ("eval_ways", "eval_shots", "eval_queries", "eval_tasks", "eval_rotate", "preset")


def training_key(name: str) -> tuple:
    """What ``name``'s preset trains: its configuration without the test protocol."""
    config = dataclasses.asdict(ledger.preset_config(name))
    return PRESETS[name][0], tuple(
        sorted((k, repr(v)) for k, v in config.items() if k not in TEST_FIELDS)
    )


def trainers(names: list[str]) -> dict[str, str]:
    """Each row's trained run: the first row of ``names`` whose preset trains alike (Snell et
    al. test one 5-shot model at 5 and 20 ways; the four Siamese rows share one verification
    model), so one training serves them all.

    Example:
      >>> trainers(["protonet-5w5s", "protonet-20w5s", "protonet-5w1s"])["protonet-20w5s"]
      'protonet-5w5s'
    """
    first: dict[tuple, str] = {}
    return {n: first.setdefault(training_key(n), n) for n in names}


def eval_commands(run_dir: Path, tasks: int, rotated: bool, name: str) -> list[list[str]]:
    """``mamlx eval`` of ``run_dir`` at preset ``name``'s test ways, shots and queries, as
    drawn and (``rotated``) with rotated test classes."""
    c = ledger.preset_config(name)
    base = ["eval", str(run_dir), "--no-progress", "--tasks", str(tasks)]
    base += ["--ways", str(c.eval_ways or c.ways), "--shots", str(c.eval_shots or c.shots)]
    base += ["--queries", str(c.eval_queries or c.queries)]
    return [[*base, "--no-eval-rotate"], *([[*base, "--eval-rotate"]] if rotated else [])]


def _cli(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "mamlx.cli", *argv]


# Both evaluations in one interpreter (one JAX start-up); each result copied aside.
_EVAL = """
import json, shutil, sys
from mamlx.cli import main
for argv, out in json.loads(sys.argv[1]):
    if main(argv) != 0:
        sys.exit(f"mamlx {' '.join(argv)} failed")
    shutil.copy(argv[1] + "/eval.json", out)
"""


def start_eval(
    run_dir: Path, tasks: int, rotated: bool, env, name: str, out_dir: Path
) -> subprocess.Popen:
    """Evaluate a run in a subprocess at preset ``name``'s protocol: its
    ``eval-drawn.json`` and ``eval-rotated.json`` go to ``out_dir``."""
    jobs = [
        (argv, str(out_dir / f"eval-{'rotated' if '--eval-rotate' in argv else 'drawn'}.json"))
        for argv in eval_commands(run_dir, tasks, rotated, name)
    ]
    return subprocess.Popen([sys.executable, "-c", _EVAL, json.dumps(jobs)], env=env)


def protocol(name: str, args) -> tuple[int, bool]:
    """Test tasks and whether to test rotated classes too, for preset ``name``: on
    Omniglot's Vinyals split, unless the paper says its test classes were not rotated
    (Reptile's; an unneeded second test costs 16 min at its 5-way 5-shot, 2 CPU cores)."""
    values = PRESETS[name][1]
    config = ledger.preset_config(name)
    ways = config.eval_ways or config.ways
    tasks = TINY_TASKS if args.tiny else ledger.protocol_tasks(ways, config.eval_tasks)
    cited = for_preset(name)
    rotated = (
        PRESETS[name][0] == "omniglot"
        and values.get("split", "vinyals") == "vinyals"
        and not (cited is not None and cited.test_rotated is False)
    )
    return tasks, rotated


def row_of(
    name: str,
    run_dir: Path,
    train: list[str],
    flags: str,
    tasks: int,
    rotated: bool,
    eval_dir: Path,
) -> dict:
    """The run as :func:`ledger.record_row` takes it (the shape of ``fewshot.run_preset``):
    trained in ``run_dir``, evaluated at ``name``'s protocol into ``eval_dir``."""
    config = json.loads((run_dir / "config.json").read_text())
    drawn = json.loads((eval_dir / "eval-drawn.json").read_text())
    rot = json.loads((eval_dir / "eval-rotated.json").read_text()) if rotated else None
    log = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = "; ".join(
        "mamlx " + shlex.join(a) for a in eval_commands(run_dir, tasks, rotated, name)
    )
    stopped = log[-1]["step"] < config["steps"]
    return {
        "preset": name,
        "flags": flags,
        "accuracy": 100 * drawn["accuracy"][0],
        "ci": 100 * drawn["accuracy"][1],
        **(
            {
                "accuracy_rotated_test": 100 * rot["accuracy"][0],
                "ci_rotated_test": 100 * rot["accuracy"][1],
            }
            if rot
            else {}
        ),
        "eval_rotate": False,
        "test_tasks": drawn["tasks"],
        "test_ways": drawn["ways"],
        "test_shots": drawn["shots"],
        "test_queries": drawn.get("queries") or config["eval_queries"] or config["queries"],
        "batch_norm": drawn.get("batch_norm"),
        "steps": log[-1]["step"],
        "planned_steps": config["steps"],
        "wall_s": sum(r["seconds"] for r in log),
        "device": machine(),
        "commit": git_rev(),
        "command": f"mamlx {shlex.join(train)}; {evals}"
        + (
            f" (stopped by its budget at step {log[-1]['step']} of {config['steps']}; "
            f"evaluated: step {drawn['step']})"
            if stopped
            else ""
        ),
        "curve": ledger.curve(run_dir),
    }


def run_rows(names: list[str], minutes: dict[str, float], args, *, parallel: bool) -> list:
    """Train ``names`` (all at once if ``parallel``), evaluate each, record each in the
    ledger; a row whose training fails or leaves no checkpoint is reported, not recorded."""
    out = Path(args.out)
    by = trainers(names)  # rows that train alike share the first one's run
    env = dict(os.environ)
    if parallel and not args.tiny:  # one device shared by every training
        env.update(
            XLA_PYTHON_CLIENT_PREALLOCATE="false",
            XLA_PYTHON_CLIENT_MEM_FRACTION=f"{0.9 / len(set(by.values())):.3f}",
        )
    deadline = time.monotonic() + 60 * args.budget_minutes if parallel else None
    plans = {}
    for name in names:
        if (out / name).exists() and not args.reuse:
            raise SystemExit(f"{out / name} exists: pass --reuse to evaluate it, or remove it")
        if by[name] == name:
            plans[name] = (out / name, train_command(name, out / name, minutes[name], args))
    if args.dry_run:
        for name in names:
            run_dir, cmd = plans[by[name]]
            if by[name] == name:
                print(f"{name}: mamlx {shlex.join(cmd)}")
            else:
                print(f"{name}: trained as {by[name]} (same training, another test protocol)")
            tasks, rotated = protocol(name, args)
            for argv in eval_commands(run_dir, tasks, rotated, name):
                print(f"{' ' * len(name)}  mamlx {shlex.join(argv)}")
        if parallel:
            print(
                f"{len(plans)} trainings at once, {env.get('XLA_PYTHON_CLIENT_MEM_FRACTION', 'all')} "
                f"of the device memory each; training stopped by {args.budget_minutes - EVAL_MIN:g} "
                f"min, evaluated by {args.budget_minutes:g} min"
            )
        return []
    procs = {}
    for name, (run_dir, cmd) in plans.items():
        if args.reuse and (run_dir / "best.npz").is_file():
            continue
        print(f"{name}: mamlx {shlex.join(cmd)}", flush=True)
        procs[name] = subprocess.Popen(_cli(cmd), env=env)
        if not parallel:
            procs[name].wait()
    failed = set()
    for name, proc in procs.items():
        try:
            left = None if deadline is None else deadline - time.monotonic() - 60 * EVAL_MIN
            if proc.wait(timeout=None if left is None else max(left, 1)) != 0:
                failed.add(name)
                print(f"{name}: training failed (exit {proc.returncode}), not recorded")
        except subprocess.TimeoutExpired:  # past the device budget: stop, evaluate what is there
            proc.terminate()
            proc.wait()
            print(f"{name}: stopped at the device budget", flush=True)
    runs, evals = [], {}
    for name in names:
        run_dir, _ = plans[by[name]]
        if by[name] in failed:
            continue
        if not (run_dir / "best.npz").is_file():
            print(f"{name}: no checkpoint to evaluate, not recorded", flush=True)
            continue
        tasks, rotated = protocol(name, args)
        (out / name).mkdir(parents=True, exist_ok=True)
        proc = start_eval(run_dir, tasks, rotated, env, name, out / name)
        evals[name] = (proc, tasks, rotated)
        if not parallel:
            proc.wait()
    for name, (proc, tasks, rotated) in evals.items():
        if proc.wait() != 0:
            print(f"{name}: evaluation failed, not recorded", flush=True)
            continue
        run_dir, cmd = plans[by[name]]
        flags = row_flags(minutes[by[name]], args)
        row = row_of(name, run_dir, cmd, flags, tasks, rotated, out / name)
        notes = "tiny smoke run (--tiny), not a result" if args.tiny else ""
        run = ledger.record_row(
            row, preset=name, source="benchmarks/reproduce.py", notes=notes, path=args.ledger
        )
        print(f"{name}: {run['mean']:.2f} ± {run['interval']:.2f} -> {run['verdict']}", flush=True)
        runs.append(run)
    return runs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--rows", default="", help="comma-separated presets, or 'cpu' / 'gpu' (default: cpu)"
    )
    ap.add_argument("--minutes", type=float, default=0, help="training budget per CPU row")
    ap.add_argument("--gpu", action="store_true", help="run the rows together on one device")
    ap.add_argument("--budget-minutes", type=float, default=10, help="--gpu: all device time")
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--out", default="runs/repro", help="parent folder of the run directories")
    ap.add_argument("--ledger", default=str(ledger.LEDGER))
    ap.add_argument("--flags", default="", help="more `mamlx train` flags for every row")
    ap.add_argument("--tiny", action="store_true", help="2 steps, 8 filters: a smoke run")
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    ap.add_argument("--reuse", action="store_true", help="evaluate runs already in --out")
    args = ap.parse_args(argv)
    rows = args.rows or ("gpu" if args.gpu else "cpu")
    names = {"cpu": list(CPU_ROWS), "gpu": list(GPU_ROWS)}.get(rows) or rows.split(",")
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        raise SystemExit(f"unknown presets {unknown}; available: {sorted(PRESETS)}")
    if args.gpu:
        train_min = max(args.budget_minutes - START_MIN - EVAL_MIN, 0.5)
        minutes = dict.fromkeys(names, 0.05 if args.tiny else train_min)
    else:
        minutes = {n: args.minutes or CPU_ROWS.get(n, 45) for n in names}
        minutes = {n: 1 if args.tiny else m for n, m in minutes.items()}
    run_rows(names, minutes, args, parallel=args.gpu)
    return 0


if __name__ == "__main__":
    sys.exit(main())
