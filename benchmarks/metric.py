"""Metric-based few-shot learners on Omniglot beside the published numbers.

Rows: Prototypical Networks (Snell et al. 2017), Matching Networks (Vinyals et
al. 2016), Relation Networks (Sung et al. 2018) and Siamese networks (Koch et
al. 2015) on Omniglot 5-way/20-way 1-shot/5-shot, plus mini-ImageNet
"needs images" rows, and the gain of hallucinated examples (Wang et al. 2018)
at 1 and 2 shots, measured on the *same* test tasks with a paired 95% CI.
Writes ``benchmarks/results/metric.{md,json}``.

Configurations (frozen dataclasses below):

* ``PAPER``: the papers' settings (episodes, ways, queries, optimiser), each
  citing its source. Far beyond a CPU budget; for accelerators.
* ``CPU``: ProtoNet 20-way 1-shot on 2 CPU cores: full Conv-4 (64 filters),
  60-way 1-shot training episodes with 5 queries per class (Snell et al.'s
  higher-way training), Adam 1e-3 halved every 2000 steps, one episode per step,
  stopped at ``--minutes`` of training wall time; 1000 test tasks.
* ``--quick``: small Conv-4 (16 filters), a few hundred steps per row, 200 test
  tasks; minutes on a laptop. The figures are smoke-level, not reproductions.

Usage::

    PYTHONPATH=. python benchmarks/metric.py --cpu --minutes 12      # ProtoNet 20w1s CPU run
    PYTHONPATH=. python benchmarks/metric.py --quick --hallucination # hallucination gain, quick
    PYTHONPATH=. python benchmarks/metric.py --quick --table         # all Omniglot rows, quick
    PYTHONPATH=. python benchmarks/metric.py --paper --table         # paper settings (accelerator)

Results from several invocations are merged into ``results/metric.json`` (keyed
by row) and the markdown table is regenerated from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mamlx.algorithms import hallucination, matching, protonet, relation, siamese
from mamlx.algorithms.siamese import pair_sampler
from mamlx.evaluation import mean_ci
from mamlx.models import ConvEmbedding, model
from mamlx.tasks import fewshot_sampler, load_omniglot, omniglot_split
from mamlx.train import init_state, make_step

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
SETTINGS = ((5, 1), (5, 5), (20, 1), (20, 5))

#: Published Omniglot accuracies (%) for 5w1s, 5w5s, 20w1s, 20w5s.
PUBLISHED_OMNIGLOT = {
    "protonet": ((98.8, 99.7, 96.0, 98.9), "Snell et al. 2017, Table 1"),
    "matching": ((98.1, 98.9, 93.8, 98.5), "Vinyals et al. 2016, Table 1"),
    "relation": ((99.6, 99.8, 97.6, 99.1), "Sung et al. 2018, Table 1"),
    "siamese": ((97.3, 98.4, 88.2, 97.0), "Koch et al. 2015, as in Vinyals et al. 2016, Table 1"),
}
#: Published mini-ImageNet 5-way accuracies (%) for 1-shot, 5-shot.
PUBLISHED_MINIIMAGENET = {
    "protonet": ((49.42, 68.20), "Snell et al. 2017, Table 2"),
    "matching": ((43.56, 55.31), "Ravi & Larochelle 2017, as in Snell et al. 2017, Table 2"),
    "relation": ((50.44, 65.32), "Sung et al. 2018, Table 2"),
}


@dataclass(frozen=True)
class Preset:
    """One training configuration of a metric learner on Omniglot (28x28, Vinyals split).

    Attributes:
      method: ``protonet``, ``matching``, ``relation`` or ``siamese``.
      train_ways, train_shots, train_queries: training episodes (Siamese: pairs
        per step is ``train_ways * (train_shots + train_queries)``).
      steps: meta-training steps (episodes).
      meta_batch: episodes per step.
      lr: Adam learning rate, halved every ``halve_every`` steps (0: constant).
      filters: Conv-4 channels.
      test_tasks: evaluation episodes (15 queries per class at 5 ways, 5 at 20).
      source: where the setting comes from.
    """

    method: str
    train_ways: int
    train_shots: int
    train_queries: int
    steps: int
    meta_batch: int = 1
    lr: float = 1e-3
    halve_every: int = 2000
    filters: int = 64
    test_tasks: int = 1000
    source: str = ""


def paper_preset(method: str, ways: int, shots: int) -> Preset:
    """The papers' Omniglot settings (for accelerators)."""
    if (
        method == "protonet"
    ):  # Snell et al. 2017, Sec. 3.1: 60-way training, 5 queries, Adam 1e-3 /2 every 2000
        return Preset(method, 60, shots, 5, 20000, source="Snell et al. 2017, Sec. 3.1")
    if method == "matching":  # Vinyals et al. 2016, Sec. 4.1: train on N-way K-shot episodes
        return Preset(
            method,
            ways,
            shots,
            5 if ways == 20 else 15,
            20000,
            32,
            source="Vinyals et al. 2016, Sec. 4.1",
        )
    if (
        method == "relation"
    ):  # Sung et al. 2018, Sec. 4.1: 19/15 (5-way) or 10/5 (20-way) queries, 1M episodes
        queries = {(5, 1): 19, (5, 5): 15, (20, 1): 10, (20, 5): 5}[(ways, shots)]
        return Preset(
            method,
            ways,
            shots,
            queries,
            1_000_000,
            lr=1e-3,
            halve_every=100_000,
            source="Sung et al. 2018, Sec. 4.1",
        )
    if method == "siamese":  # Koch et al. 2015, Sec. 4: verification pairs (128 per minibatch)
        return Preset(
            method, 64, 1, 1, 20000, source="Koch et al. 2015, Sec. 4 (pairs, minibatch 128)"
        )
    raise ValueError(method)


def quick_preset(method: str, ways: int, shots: int) -> Preset:
    """Smoke-level settings: small Conv-4, a few hundred steps."""
    train_ways = 20 if method == "protonet" else ways
    return Preset(
        method, train_ways, shots, 5, 300, filters=16, test_tasks=200, halve_every=0, source="quick"
    )


#: The documented CPU configuration (ProtoNet 20-way 1-shot).
CPU = Preset(
    "protonet", 60, 1, 5, 100_000, source="Snell et al. 2017 settings, CPU budget (stopped by time)"
)


def build(method: str, filters: int, num_hallucinated: int = 0):
    """(learner, train sampler factory) for a method with a Conv-4 of ``filters`` channels."""
    flat = model(lambda r: ConvEmbedding(1, filters=filters, rngs=r))
    if method == "protonet":
        return protonet(*flat)
    if method == "hallucination":
        return hallucination(*flat, feature_dim=filters, num_hallucinated=num_hallucinated)
    if method == "matching":
        return matching(*flat)
    if method == "siamese":
        return siamese(*flat, feature_dim=filters)
    if method == "relation":  # Sung et al.: pool in the first two blocks -> 7x7 maps
        maps = model(
            lambda r: ConvEmbedding(1, filters=filters, pool_blocks=2, flatten=False, rngs=r)
        )
        return relation(*maps, feature_shape=(7, 7, filters), filters=filters)
    raise ValueError(method)


def optimizer(p: Preset) -> optax.GradientTransformation:
    if not p.halve_every:
        return optax.adam(p.lr)
    sched = optax.exponential_decay(p.lr, p.halve_every, 0.5, staircase=True)
    return optax.adam(sched)


def per_task_accuracy(
    learner, params, ways: int, shots: int, data, key, num_tasks: int, batch=20, rotate=False
):
    """Query accuracy of each of ``num_tasks`` test tasks (same key -> same tasks).

    ``rotate=True`` counts the 90-degree rotations of the test characters as classes too,
    as Snell et al. 2017 do ("the remaining classes, including rotations, for test").
    """
    queries = 15 if ways == 5 else 5
    sampler = fewshot_sampler(ways, shots, queries, rotate=rotate)

    @jax.jit
    def accs(params, k):
        eps = sampler.sample_batch(k, data, batch)

        def one(ep):
            logits = learner.predict(learner.adapt(params, ep.support_x, ep.support_y), ep.query_x)
            return jnp.mean(jnp.argmax(logits, -1) == ep.query_y)

        # vmap, not lax.map: XLA:CPU convolutions inside loops are slow.
        return jax.vmap(one)(eps)

    out = [
        np.asarray(accs(params, jax.random.fold_in(key, i))) for i in range(-(-num_tasks // batch))
    ]
    return np.concatenate(out)[:num_tasks]


def train(
    p: Preset, train_data, *, minutes: float | None = None, seed: int = 0, num_hallucinated=None
):
    """Meta-train a preset; stops early after ``minutes`` of training wall time."""
    method = p.method if num_hallucinated is None else "hallucination"
    learner = build(method, p.filters, num_hallucinated or 0)
    opt = optimizer(p)
    state = init_state(learner, opt, jax.random.PRNGKey(seed))
    if p.method == "siamese":
        sampler = pair_sampler(p.train_ways * (p.train_shots + p.train_queries), rotate=True)
    else:
        sampler = fewshot_sampler(p.train_ways, p.train_shots, p.train_queries, rotate=True)
    # One jitted step per host call, not ``fit``'s ``lax.scan`` chunks: XLA:CPU runs
    # convolutions inside a while loop about 7x slower (measured: 1.0 s for one
    # 60-way ProtoNet gradient, 13.9 s for a scan of two).
    step = jax.jit(make_step(learner, sampler, opt, p.meta_batch))
    start = time.perf_counter()
    while int(state.step) < p.steps:
        state, metrics = step(state, train_data)
        if int(state.step) % 100 == 0:
            loss = float(metrics["loss"])
            if not np.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at step {int(state.step)}")
            print(
                f"  step {int(state.step)} loss {loss:.4f} {time.perf_counter() - start:.0f}s",
                flush=True,
            )
            if minutes is not None and time.perf_counter() - start > 60 * minutes:
                break
    return learner, state.params, int(state.step), time.perf_counter() - start


def load() -> tuple[jax.Array, jax.Array]:
    root = Path(os.environ.get("MAMLX_DATA_DIR", REPO.parent / "shared" / "data")) / "omniglot"
    split = omniglot_split(load_omniglot("npz", root), "vinyals", seed=0)
    return jnp.asarray(split.train), jnp.asarray(split.test)


def machine() -> str:
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        load1 = float("nan")
    return f"{platform.machine()}, {os.cpu_count()} cores, load {load1:.1f}, jax {jax.__version__} {jax.default_backend()}"


def run_row(p: Preset, ways: int, shots: int, train_data, test_data, minutes, label):
    learner, params, steps, secs = train(p, train_data, minutes=minutes)
    key = jax.random.PRNGKey(1234)
    mean, ci = mean_ci(
        per_task_accuracy(learner, params, ways, shots, test_data, key, p.test_tasks)
    )
    rot = mean_ci(
        per_task_accuracy(learner, params, ways, shots, test_data, key, p.test_tasks, rotate=True)
    )
    return {
        "method": p.method,
        "setting": f"{ways}w{shots}s",
        "config": label,
        "accuracy": 100 * mean,
        "ci95": 100 * ci,
        "accuracy_rotated_test": 100 * rot[0],
        "ci95_rotated_test": 100 * rot[1],
        "steps": steps,
        "train_s": round(secs, 1),
        "test_tasks": p.test_tasks,
        "preset": dataclasses.asdict(p),
        "machine": machine(),
        "command": _command(),
    }


def hallucination_gain(train_data, test_data, *, quick: bool, num_hallucinated: int = 3):
    """ProtoNet with vs without hallucination at 1 and 2 shots, same test tasks, paired CI."""
    rows = []
    for shots in (1, 2):
        p = Preset(
            "protonet",
            20,
            shots,
            5,
            300 if quick else 5000,
            filters=16 if quick else 64,
            test_tasks=300 if quick else 1000,
            halve_every=0 if quick else 2000,
        )
        results = {}
        for m in (0, num_hallucinated):
            learner, params, steps, secs = train(p, train_data, num_hallucinated=m)
            results[m] = (
                per_task_accuracy(
                    learner, params, 5, shots, test_data, jax.random.PRNGKey(99), p.test_tasks
                ),
                secs,
            )
        base, hall = results[0][0], results[num_hallucinated][0]
        rows.append(
            {
                "shots": shots,
                "num_hallucinated": num_hallucinated,
                "steps": p.steps,
                "protonet": mean_ci(100 * base),
                "hallucination": mean_ci(100 * hall),
                "gain": mean_ci(100 * (hall - base)),
                "train_s": [round(results[0][1], 1), round(results[num_hallucinated][1], 1)],
                "config": "quick" if quick else "full",
                "preset": dataclasses.asdict(p),
                "machine": machine(),
                "command": _command(),
            }
        )
        print(rows[-1])
    return rows


def _command() -> str:
    """How this script was run, for the results' rows."""
    return " ".join(["python", "benchmarks/metric.py", *sys.argv[1:]])


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
    ap.add_argument("--paper", action="store_true", help="the papers' settings")
    ap.add_argument("--cpu", action="store_true", help="the CPU configuration: ProtoNet 20w1s")
    ap.add_argument("--table", action="store_true", help="all Omniglot rows of --methods")
    ap.add_argument("--methods", default="protonet,matching,relation,siamese")
    ap.add_argument(
        "--hallucination", action="store_true", help="hallucination gain at 1 and 2 shots"
    )
    ap.add_argument("--minutes", type=float, default=None, help="training time budget per row")
    args = ap.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "metric.json"
    db = json.loads(path.read_text()) if path.is_file() else {"rows": {}, "hallucination": []}
    train_data, test_data = load()

    def save():
        path.write_text(json.dumps(db, indent=1))
        (RESULTS / "metric.md").write_text(write_markdown(db))

    if args.cpu:
        r = run_row(CPU, 20, 1, train_data, test_data, args.minutes, "cpu")
        db["rows"]["protonet/20w1s/cpu"] = r
        print(r)
        save()
    if args.table:
        label = "quick" if args.quick else "paper"
        for method in args.methods.split(","):
            for ways, shots in SETTINGS:
                p = (quick_preset if args.quick else paper_preset)(method, ways, shots)
                r = run_row(p, ways, shots, train_data, test_data, args.minutes, label)
                db["rows"][f"{method}/{ways}w{shots}s/{label}"] = r
                print(r)
                save()
    if args.hallucination:
        db["hallucination"] = hallucination_gain(train_data, test_data, quick=args.quick)
        save()
    save()


if __name__ == "__main__":
    main()
