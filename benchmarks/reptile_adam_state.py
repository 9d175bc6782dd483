"""Does Reptile's inner Adam state matter? Nichol et al.'s code against mamlx's default.

Nichol et al.'s reference code (openai/supervised-reptile) keeps the inner Adam optimizer's
moments in TensorFlow variables that the meta-update neither saves nor restores: they carry
over from task to task through all of training, and every test task starts its inner loop
from the state training ended with (restored after each test task). mamlx's ``reptile``
re-initialises it per task by default (``reset_inner_state=True``). With beta1 = 0 a fresh Adam's first steps are
sign steps of size lr in every coordinate; a carried one divides by the long-run gradient
scale. This script trains the Reptile 5-way 1-shot preset's settings both ways, on the same
episodes and keys, and reports the non-transductive validation accuracy along the way:

    python benchmarks/reptile_adam_state.py --data-dir ../shared/data/omniglot --steps 5000

It is a measurement for the #21 ledger's Reptile rows, not a trainer. Both arms are written
here apart from ``mamlx.reptile`` (whose ``reset_inner_state=False`` came from this
measurement), so the script is also an independent check of it; the tests hold the
library's both ways to hand-computed Adam.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np
import optax

from mamlx import inner
from mamlx.algorithms.gradient_based import make_predict, support_loss_fn
from mamlx.algorithms.reptile import minibatch_indices
from mamlx.datasets import context
from mamlx.experiments import build
from mamlx.losses import accuracy
from mamlx.presets import preset_config


def make_arm(apply_fn, config, carry_state: bool):
    """``(meta_step, evaluate)`` of one arm: inner Adam state carried or reset per task."""
    opt = optax.adam(config.learner.inner_lr, b1=0.0)
    loss = support_loss_fn(apply_fn)
    steps, batch = config.learner.inner_steps, config.learner.inner_batch
    eval_steps = config.learner.eval_inner_steps

    def train_task(state, task):
        episode, key = task
        idx = minibatch_indices(key, episode.support_x.shape[0], batch, steps)
        inputs = (episode.support_x[idx], episode.support_y[idx])
        phi, opt_state = state
        res = inner.run(
            lambda p, b: loss(p, *b), phi, steps=steps, optimizer=opt, step_inputs=inputs,
            opt_state=opt_state if carry_state else None,
        )  # fmt: skip
        return (phi, res.opt_state if carry_state else opt_state), res.params

    def meta_step(phi, opt_state, episodes, key, eps):
        keys = jax.random.split(key, episodes.support_x.shape[0])
        (_, opt_state), thetas = jax.lax.scan(train_task, (phi, opt_state), (episodes, keys))
        mean = jax.tree.map(lambda t: t.mean(0), thetas)
        return jax.tree.map(lambda p, m: p + eps * (m - p), phi, mean), opt_state

    def adapt_params(phi, opt_state, x, y):
        state = opt_state if carry_state else None
        return inner.run(
            lambda p: loss(p, x, y), phi, steps=eval_steps, optimizer=opt, opt_state=state
        ).params

    def evaluate(phi, opt_state, episode):
        adapt, predict = make_predict(
            apply_fn, lambda p, x, y, s: adapt_params(p, opt_state, x, y), transductive=False
        )
        ctx = adapt(phi, episode.support_x, episode.support_y)
        return accuracy(predict(ctx, episode.query_x), episode.query_y)

    return jax.jit(meta_step), jax.jit(jax.vmap(evaluate, in_axes=(None, None, 0))), opt


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--preset", default="reptile-5w1s")
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--val-every", type=int, default=2500)
    ap.add_argument("--val-tasks", type=int, default=200)
    ap.add_argument("--arms", default="reset,carry")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)

    config = preset_config(args.preset, data_dir=args.data_dir)
    exp = build(config)
    apply_fn, init_fn = context(config).classifier()
    total = config.steps  # the preset's schedule: outer step annealed linearly to 0
    val = exp.splits["val"]
    val_batch = 20
    val_keys = jax.random.split(jax.random.PRNGKey(1), args.val_tasks // val_batch)
    sample = jax.jit(exp.sampler.sample_batch, static_argnums=2)
    sample_val = jax.jit(exp.eval_sampler.sample_batch, static_argnums=2)
    results = {}
    for arm in args.arms.split(","):
        meta_step, evaluate, opt = make_arm(apply_fn, config, arm == "carry")
        phi = init_fn(jax.random.PRNGKey(0))
        opt_state = opt.init(phi)
        key = jax.random.PRNGKey(2)
        curve, t0 = [], time.perf_counter()
        for step in range(1, args.steps + 1):
            key, k_data, k_inner = jax.random.split(key, 3)
            episodes = sample(k_data, exp.data, config.meta_batch)
            eps = config.meta_lr * (1 - (step - 1) / total)
            phi, opt_state = meta_step(phi, opt_state, episodes, k_inner, eps)
            if step % args.val_every == 0:
                accs = [evaluate(phi, opt_state, sample_val(k, val, val_batch)) for k in val_keys]
                acc = 100 * float(np.mean(np.concatenate([np.asarray(a) for a in accs])))
                curve.append((step, round(acc, 2)))
                print(f"{arm}: step {step} validation {acc:.2f} ({time.perf_counter() - t0:.0f} s)",
                      flush=True)  # fmt: skip
        results[arm] = curve
    print(json.dumps(results))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"preset": args.preset, "steps": args.steps, "curves": results}, f)


if __name__ == "__main__":
    main()
