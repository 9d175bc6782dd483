"""Gate values of a trained meta-learner LSTM over its inner updates (Ravi & Larochelle 2017, Fig. 2).

Loads a ``mamlx train ... --algo meta-lstm`` run (its best validation checkpoint), runs the
learned update rule on the support sets of held-out test tasks and plots, per layer of the
learner, the mean input gate ``i_t`` (the learned learning rate) and forget gate ``f_t`` over
the updates (mean over coordinates and tasks, with the 10-90% band over coordinates).

    python benchmarks/meta_lstm_gates.py RUN_DIR [--out PNG] [--tasks 20] [--steps N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
import matplotlib.pyplot as plt  # noqa: E402

from mamlx.algorithms import meta_lstm_gate_trace  # noqa: E402
from mamlx.cli import _load_trained  # noqa: E402
from mamlx.datasets import fewshot_model  # noqa: E402
from mamlx.experiments import build_learner as fewshot_learner  # noqa: E402


def learner_apply_fn(config):
    """The Conv-4 ``apply_fn`` of a few-shot configuration (the one ``fewshot_learner`` uses)."""
    return fewshot_model(config)[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--out", help="PNG path (default: RUN_DIR/meta_lstm_gates.png)")
    p.add_argument("--tasks", type=int, default=20)
    p.add_argument("--steps", type=int, help="inner updates (default: the run's eval setting)")
    args = p.parse_args(argv)
    run_dir = Path(args.run_dir)
    config, exp, state = _load_trained(run_dir)
    if config.algo != "meta-lstm":
        raise SystemExit(f"{run_dir} is a {config.algo} run, not meta-lstm")
    fewshot_learner(config)  # validates the configuration
    apply_fn = learner_apply_fn(config)
    steps = args.steps or config.eval_inner_steps
    eps = exp.eval_sampler.sample_batch(jax.random.key(4242), exp.splits["test"], args.tasks)
    trace = jax.jit(
        jax.vmap(lambda x, y: meta_lstm_gate_trace(apply_fn, state.params, x, y, steps))
    )(eps.support_x, eps.support_y)
    # one curve per learner layer: conv blocks by index, then the head
    layers: dict[str, dict[str, list]] = {}
    for (path, i_leaf), f_leaf in zip(
        jax.tree_util.tree_leaves_with_path(trace["input"]),
        jax.tree.leaves(trace["forget"]),
        strict=True,
    ):
        keys = [str(getattr(k, "key", k)) for k in path]
        name = "conv " + keys[1] if keys[0] == "blocks" else keys[0]
        for gate, leaf in (("input", i_leaf), ("forget", f_leaf)):
            a = np.asarray(leaf)  # (tasks, steps, *shape)
            layers.setdefault(name, {}).setdefault(gate, []).append(a.reshape(*a.shape[:2], -1))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, gate in zip(axes, ("input", "forget"), strict=True):
        for name, gates in layers.items():
            v = np.concatenate(gates[gate], -1)  # (tasks, steps, coords)
            mean = v.mean((0, 2))
            lo, hi = np.percentile(v.transpose(1, 0, 2).reshape(steps, -1), [10, 90], axis=1)
            x = np.arange(1, steps + 1)
            ax.plot(x, mean, marker="o", ms=3, label=name)
            ax.fill_between(x, lo, hi, alpha=0.15)
        ax.set_xlabel("inner update t")
        ax.set_title(f"{gate} gate ({'learning rate' if gate == 'input' else 'shrinkage'})")
        ax.legend(fontsize=7)
    loss = np.asarray(trace["loss"]).mean(0)
    fig.suptitle(
        f"{run_dir.name}: meta-learner LSTM gates over {args.tasks} test tasks "
        f"(support loss {loss[0]:.2f} -> {loss[-1]:.2f} before the last update)",
        fontsize=9,
    )
    fig.tight_layout()
    out = Path(args.out) if args.out else run_dir / "meta_lstm_gates.png"
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")
    for name, gates in layers.items():
        i = np.concatenate(gates["input"], -1).mean((0, 2))
        f = np.concatenate(gates["forget"], -1).mean((0, 2))
        print(f"{name:12s} input {np.round(i, 3)}  forget {np.round(f, 4)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
