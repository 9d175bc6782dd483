"""Learning the learning algorithm by RL: searched update rules and activations (Omniglot, CPU).

Two searches with ``mamlx.search``, each an LSTM controller trained by REINFORCE (moving-
average baseline, entropy bonus); every controller update samples a batch of programs,
trains a child network with each of them, all under one ``vmap``, and updates the controller:

- update rules ``Δw = λ·b(u₁(op₁), u₂(op₂))`` in two groups (Bello et al. 2017, "Neural
  Optimizer Search with Reinforcement Learning"); reward: validation accuracy of a small MLP
  trained with the rule on N-way classification of Omniglot characters from the background
  alphabets (the best over a small λ grid);
- activations ``b₂(u₃(b₁(u₁(x), u₂(x))), u₄(x))`` (Ramachandran, Zoph & Le 2017, "Searching
  for Activation Functions"); reward: the same child's validation accuracy with the
  activation in its hidden layer, trained with Adam.

The distinct programs with the best search rewards are scored again on the search task, and
the best few are retrained on the held-out task family — characters of the evaluation
alphabets and a deeper child (two hidden layers) trained longer — against SGD with momentum
and Adam (rules; PowerSign and AddSign as published references) or ReLU and Swish
(activations), each with its rate tuned on the validation drawers, over several seeds; test
drawers are reported. Also measured: candidates evaluated per second, a batch under one
``vmap`` against one program at a time.

    python benchmarks/rl_search.py --data-dir ../shared/data/omniglot --minutes 30
    python benchmarks/rl_search.py --quick --data-dir ../shared/data/omniglot   # smoke run

Writes ``results/rl_search.{md,json}`` and ``results/rl_search-reward.png`` (``--quick``:
``rl_search-quick.*``, smoke-level, not results).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from mamlx import search  # noqa: E402
from mamlx.evaluation import mean_ci  # noqa: E402
from mamlx.tasks import load_omniglot, omniglot_split  # noqa: E402

from common import RESULTS, git_rev, machine, write_results  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes of one benchmark run (``FULL`` or ``QUICK``)."""

    classes: int = 100  # N-way classification, search and transfer tasks
    child: search.ChildConfig = search.ChildConfig(hidden=(32,), steps=300, batch_size=32)
    transfer_child: search.ChildConfig = search.ChildConfig(
        hidden=(64, 64), steps=600, batch_size=32
    )
    rule_lrs: tuple[float, ...] = (0.003, 0.03, 0.3)  # λ grid of every searched rule
    batch: int = 16  # programs per controller update
    hidden: int = 32  # controller LSTM width
    controller_lr: float = 5e-3
    entropy_weight: float = 1e-3
    baseline_decay: float = 0.9
    rescore: int = 2  # extra keys on which the top programs are scored again
    top: int = 3  # programs retrained on the held-out family
    seeds: int = 5
    tune_lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
    tune_adam_lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)


FULL = Settings()
QUICK = Settings(
    classes=20,
    child=search.ChildConfig(hidden=(16,), steps=60, batch_size=32),
    transfer_child=search.ChildConfig(hidden=(32, 32), steps=100, batch_size=32),
    rule_lrs=(0.01, 0.1),
    batch=4,
    hidden=16,
    rescore=1,
    top=2,
    seeds=2,
    tune_lrs=(0.01, 0.1),
    tune_adam_lrs=(1e-3, 1e-2),
)


def tasks(args, s: Settings):
    """Search task (background alphabets) and held-out task (evaluation alphabets)."""
    chars = load_omniglot("npz", args.data_dir) if args.data_dir else load_omniglot("zip")
    split = omniglot_split(chars, "background")
    return (
        search.classification_task(split.train, num_classes=s.classes, seed=0),
        search.classification_task(split.test, num_classes=s.classes, seed=1),
    )


def run_search(name, space, rewards, task, s: Settings, seconds: float, seed: int):
    """Controller updates for ``seconds`` after the first (at least two); log, every program.

    ``rewards`` is the jitted reward function: sampling, the child runs and the update are
    three compiled functions here (``search.make_search_step`` fuses them into one), so the
    reward function compiled for the search also rescores and times the best programs.
    """
    ctrl = search.controller(space, hidden=s.hidden)
    rl = search.reinforce(
        ctrl,
        optax.adam(s.controller_lr),
        entropy_weight=s.entropy_weight,
        baseline_decay=s.baseline_decay,
    )
    sample, update = jax.jit(rl.sample, static_argnums=2), jax.jit(rl.update)
    state = rl.init(jax.random.key(seed))
    log, programs = [], []
    t0 = time.perf_counter()
    compile_s = None
    while len(log) < 2 or time.perf_counter() - t0 < seconds + compile_s:
        tic = time.perf_counter()
        k_sample, k_reward = jax.random.split(jax.random.key(1000 * seed + len(log)))
        codes = sample(state, k_sample, s.batch).codes
        batch_rewards = rewards(codes, k_reward, task)
        state, metrics = update(state, codes, batch_rewards)
        codes, batch_rewards = np.asarray(codes), np.asarray(batch_rewards)
        if compile_s is None:
            compile_s = time.perf_counter() - tic  # the first update compiles
        row = {k: float(v) for k, v in metrics.items()}
        row.update(update=len(log) + 1, seconds=round(time.perf_counter() - t0 - compile_s, 2))
        log.append(row)
        programs += [
            (tuple(int(t) for t in c), float(r)) for c, r in zip(codes, batch_rewards, strict=True)
        ]
        if len(log) % 10 == 1:
            print(
                f"  {name} update {row['update']:4d}: reward mean {row['reward_mean']:.3f} "
                f"max {row['reward_max']:.3f} baseline {row['baseline']:.3f} "
                f"entropy {row['entropy']:.2f} ({row['seconds']:.0f}s)",
                flush=True,
            )
    return log, programs, compile_s


def best_programs(space, programs, reward_fn, task, s: Settings, seed: int):
    """Distinct formulas ranked by search reward; the top ``batch`` scored again."""
    by_formula = defaultdict(list)
    code_of = {}
    for code, r in programs:
        f = space.formula(np.asarray(code))
        by_formula[f].append(r if np.isfinite(r) else 0.0)
        code_of.setdefault(f, code)
    ranked = sorted(by_formula, key=lambda f: -np.mean(by_formula[f]))[: s.batch]
    while len(ranked) < s.batch:  # pad the batch (the compiled shape) with the best one
        ranked.append(ranked[0])
    codes = jnp.asarray([code_of[f] for f in ranked], jnp.int32)
    again = [
        np.asarray(reward_fn(codes, jax.random.key(50_000 + 100 * seed + i), task))
        for i in range(s.rescore)
    ]
    rows = {}
    for i, f in enumerate(ranked):
        if f not in rows:
            rows[f] = {
                "formula": f,
                "code": list(code_of[f]),
                "search_reward": float(np.mean(by_formula[f])),
                "times_sampled": len(by_formula[f]),
                "rescored": float(np.mean([a[i] for a in again])),
            }
    return sorted(rows.values(), key=lambda r: -(r["rescored"] + r["search_reward"]) / 2)


def throughput(batched, codes, task) -> dict:
    """Candidates per second: the batch under one ``vmap`` against one program at a time.

    ``batched`` is the jitted reward function, already compiled for the batch's shape."""
    key = jax.random.key(7)
    jax.block_until_ready(batched(codes[:1], key, task))  # compile the one-program shape

    def best_of(fn, reps=3):  # the fastest of a few timings (the machine is shared)
        times = []
        for _ in range(reps):
            tic = time.perf_counter()
            fn()
            times.append(time.perf_counter() - tic)
        return min(times)

    t_batch = best_of(lambda: jax.block_until_ready(batched(codes, key, task)))
    t_single = best_of(
        lambda: [
            jax.block_until_ready(batched(codes[i : i + 1], key, task)) for i in range(len(codes))
        ]
    )
    n = len(codes)
    return {
        "batch": n,
        "batched_per_s": n / t_batch,
        "one_by_one_per_s": n / t_single,
        "speedup": t_single / t_batch,
    }


def _grid(train):
    """Jit ``train(code, lr, key) -> ChildResult`` over a rate grid and seed keys."""
    return jax.jit(jax.vmap(jax.vmap(train, (None, None, 0)), (None, 0, None)))


def _pick(res, lrs) -> dict:
    """The rate with the best mean validation accuracy over seeds; test accuracy there."""
    valid = np.asarray(res.valid)
    val = np.where(valid, np.asarray(res.val_accuracy), 0.0).mean(axis=1)
    best = int(np.argmax(val))
    test = np.where(valid[best], np.asarray(res.test_accuracy)[best], 0.0)
    m, c = mean_ci(100 * test)
    return {
        "lr": float(lrs[best]),
        "val_accuracy": 100 * float(val[best]),
        "test_accuracy": [m, c],
        "test_per_seed": (100 * test).round(2).tolist(),
        "valid_runs": int(valid[best].sum()),
    }


def _rows(named_codes, grid, lrs, keys) -> list[dict]:
    lr_arr = jnp.asarray(lrs, jnp.float32)
    return [
        {"name": name, **_pick(grid(jnp.asarray(code, jnp.int32), lr_arr, keys), lrs)}
        for name, code in named_codes
    ]


def transfer_rules(best, task, s: Settings) -> list[dict]:
    """Searched rules, PowerSign, AddSign, SGD with momentum and Adam on the held-out family."""
    keys = jax.random.split(jax.random.key(90_000), s.seeds)

    def child(opt, key):
        return search.train_child(task, opt, key, num_classes=s.classes, config=s.transfer_child)

    # one compiled program for every rule given as a code
    by_code = _grid(lambda code, lr, key: child(search.as_optax(code, lr), key))
    named = [(f"searched: {r['formula']}", r["code"]) for r in best[: s.top]]
    named += [
        (f"{n} (Bello et al.): {search.formula(search.KNOWN_RULES[n])}", search.KNOWN_RULES[n])
        for n in ("powersign", "addsign")
    ]
    rows = _rows(named, by_code, s.tune_lrs, keys)
    unused = np.zeros(search.UPDATE_RULES.length, np.int32)
    sgd_m = _grid(lambda code, lr, key: child(optax.sgd(lr, momentum=0.9), key))
    adam = _grid(lambda code, lr, key: child(optax.adam(lr), key))
    rows += _rows([("SGD, momentum 0.9", unused)], sgd_m, s.tune_lrs, keys)
    rows += _rows([("Adam", unused)], adam, s.tune_adam_lrs, keys)
    return rows


def transfer_activations(best, task, s: Settings) -> list[dict]:
    """Searched activations, ReLU and Swish (Adam, rate tuned) on the held-out family."""
    keys = jax.random.split(jax.random.key(90_000), s.seeds)
    by_code = _grid(  # one compiled program for every activation, ReLU and Swish included
        lambda code, lr, key: search.train_child(
            task,
            optax.adam(lr),
            key,
            num_classes=s.classes,
            config=s.transfer_child,
            activation_fn=search.activation(code),
        )
    )
    named = [(f"searched: {r['formula']}", r["code"]) for r in best[: s.top]]
    named += [
        (
            f"{n}: {search.activation_formula(search.KNOWN_ACTIVATIONS[n])}",
            search.KNOWN_ACTIVATIONS[n],
        )
        for n in ("relu", "swish")
    ]
    return _rows(named, by_code, s.tune_adam_lrs, keys)


def reward_figure(logs: dict, path: Path) -> str:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return "matplotlib is not installed: no figure"
    fig = Figure(figsize=(10, 4))
    for i, (name, log) in enumerate(logs.items()):
        ax = fig.add_subplot(1, len(logs), i + 1)
        u = [r["update"] for r in log]
        ax.plot(u, [r["reward_mean"] for r in log], label="batch mean", color="tab:blue")
        ax.plot(u, [r["reward_max"] for r in log], label="batch max", color="tab:green", alpha=0.6)
        ax.plot(u, [r["baseline"] for r in log], label="baseline", color="tab:red", ls="--")
        ax.set_xlabel("controller update")
        ax.set_ylabel("reward (validation accuracy)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return f"wrote {path}"


def markdown(db: dict) -> str:
    s = db["settings"]
    lines = [
        "# Learning the learning algorithm by RL (Omniglot, CPU budget)",
        "",
        f"`{db['command']}`; {db['config']}. Search task: {s['classes']}-way classification "
        "of Omniglot characters from the background alphabets (12 drawers train, 4 validation); "
        f"child MLP hidden {tuple(s['child']['hidden'])}, {s['child']['steps']} steps of batch "
        f"{s['child']['batch_size']}. Rules get the best validation accuracy over λ in "
        f"{tuple(s['rule_lrs'])}; activations train with Adam (3e-3). Held-out family: "
        f"{s['classes']} characters of the evaluation alphabets, child MLP hidden "
        f"{tuple(s['transfer_child']['hidden'])}, {s['transfer_child']['steps']} steps; every "
        f"row's rate tuned on the validation drawers, test accuracy (%) on the 4 test drawers "
        f"± 95% CI over {s['seeds']} seeds. Generated by `benchmarks/rl_search.py`.",
        "",
    ]
    for key, title in (("rules", "Update rules"), ("activations", "Activations")):
        r = db[key]
        th = r["throughput"]
        lines += [
            f"## {title}",
            "",
            f"{len(r['log'])} controller updates of {s['batch']} programs in "
            f"{r['search_s']:.0f} s after the first (which compiled: {r['compile_s']:.0f} s); "
            f"{r['evaluated']} programs, {r['distinct']} distinct formulas, "
            f"{100 * r['invalid']:.1f}% invalid (worst reward). Mean batch reward: first "
            f"update {r['log'][0]['reward_mean']:.3f}, last {r['log'][-1]['reward_mean']:.3f}.",
            "",
            f"Candidates evaluated per second: {th['batched_per_s']:.2f} as a batch of "
            f"{th['batch']} under one vmap, {th['one_by_one_per_s']:.2f} one at a time "
            f"({th['speedup']:.1f}x).",
            "",
            "Top programs (search reward: mean over the times sampled; rescored: new keys):",
            "",
            "| formula | search reward | times sampled | rescored |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| `{b['formula']}` | {b['search_reward']:.3f} | {b['times_sampled']} | "
            f"{b['rescored']:.3f} |"
            for b in r["best"]
        ]
        lines += [
            "",
            "Held-out family:",
            "",
            "| row | tuned rate | validation (%) | test (%) |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| `{t['name']}` | {t['lr']:g} | {t['val_accuracy']:.2f} | "
            f"{t['test_accuracy'][0]:.2f} ± {t['test_accuracy'][1]:.2f} |"
            for t in r["transfer"]
        ]
        lines.append("")
    lines += [
        f"Reward against controller updates: `results/{db['name']}-reward.png`.",
        "",
        f"Machine: {db['machine']}. Commit: {db['commit']}. Wall time {db['wall_s']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="", help="Omniglot npz folder (default: the cache)")
    p.add_argument("--minutes", type=float, default=30.0, help="budget of the two searches")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes and budget (smoke run)")
    args = p.parse_args(argv)
    if args.quick and "--minutes" not in (sys.argv[1:] if argv is None else argv):
        args.minutes = 0.5
    s = QUICK if args.quick else FULL
    t0 = time.perf_counter()
    task, held_out = tasks(args, s)
    spaces = {
        "rules": (
            search.UPDATE_RULES,
            search.rule_rewards(s.classes, s.child, learning_rates=s.rule_lrs),
            0.55,
            transfer_rules,
        ),
        "activations": (
            search.ACTIVATIONS,
            search.activation_rewards(s.classes, s.child),
            0.45,
            transfer_activations,
        ),
    }
    db = {
        "name": "rl_search-quick" if args.quick else "rl_search",
        "config": "quick: smoke-level, not results" if args.quick else "full",
        "command": "python benchmarks/rl_search.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": dataclasses.asdict(s),
        "machine": machine(),
        "commit": git_rev(),
    }
    for key, (space, reward_fn, share, transfer) in spaces.items():
        print(f"{key}: searching for {share * args.minutes:.1f} min", flush=True)
        jitted = jax.jit(reward_fn)
        log, programs, compile_s = run_search(
            key, space, jitted, task, s, 60 * share * args.minutes, args.seed
        )
        search_s = log[-1]["seconds"]
        best = best_programs(space, programs, jitted, task, s, args.seed)
        print(f"{key}: top programs (search reward, rescored)")
        for b in best[:5]:
            print(f"  {b['search_reward']:.3f} {b['rescored']:.3f}  {b['formula']}")
        codes = jnp.asarray([b["code"] for b in best] * s.batch, jnp.int32)[: s.batch]
        th = throughput(jitted, codes, task)
        print(
            f"{key}: {th['batched_per_s']:.2f} candidates/s batched, "
            f"{th['one_by_one_per_s']:.2f} one by one",
            flush=True,
        )
        rows = transfer(best, held_out, s)
        print(f"{key}: held-out family (test accuracy %, tuned rate)")
        for t in rows:
            m, c = t["test_accuracy"]
            print(f"  {m:6.2f} ± {c:5.2f}  lr {t['lr']:g}  {t['name']}", flush=True)
        rewards = np.asarray([r for _, r in programs])
        db[key] = {
            "log": log,
            "search_s": round(search_s, 1),
            "compile_s": round(compile_s, 1),
            "evaluated": len(programs),
            "distinct": len({space.formula(np.asarray(c)) for c, _ in programs}),
            "invalid": float(np.mean(~np.isfinite(rewards) | (rewards <= 0.0))),
            "best": best,
            "throughput": th,
            "transfer": rows,
        }
    db["wall_s"] = round(time.perf_counter() - t0, 1)
    path = write_results(db["name"], markdown(db), db)
    print(f"wrote {path}")
    print(
        reward_figure(
            {"update rules": db["rules"]["log"], "activations": db["activations"]["log"]},
            RESULTS / f"{db['name']}-reward.png",
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
