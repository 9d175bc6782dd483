"""CPU throughput levers (#24): ``fit``'s compiled step with one change, beside the default.

Each lever is a change to how the Conv-4 meta-training step is computed, applied while
the step is traced and compiled (the library is patched inside a ``with`` block and
restored after; nothing here changes mamlx). The baseline and each variant are
compiled once and timed in **interleaved** rounds in this one process, so that drift of
a shared machine hits them alike. Results of the session that measured them:
``benchmarks/results/throughput_levers_cpu.md``.

Levers:

* ``bias-shift``: no conv bias added before batch norm (with batch statistics it cancels
  in the output, so only the running mean would need it);
* ``bn-reduce``: batch-norm statistics by ``mean`` reductions instead of matrix-vector
  products (since session 23 in the blocks after the first, whose statistics come from its
  patches: not comparable with the session-20 figures, which covered every block);
* ``task-groups``: ``vmap`` over groups of 2, 4 and 8 tasks inside the per-task loop;
* ``patch-barrier``: the patches' input (batch norm + ReLU of the layer before) written
  once (``lax.optimization_barrier``) instead of recomputed inside each tap slice;
* ``shifted-products``: the 64-channel convolutions as nine shifted products
  ``sum_t slice_t(x) @ W_t`` (no patch matrix);
* ``shared-first-step``: every task's first inner step starts from the same meta-parameters,
  so it is taken for all tasks at once (``vmap`` with the parameters shared: one product over
  the whole batch's support images per layer, per-task weight gradients), and only the later
  steps and the query loss loop over tasks; second-order MAML sends the query loss's
  cotangents back through that vectorized step in one ``vjp``. It won for first-order MAML
  and Reptile, which now do it themselves when they loop over tasks
  (:func:`mamlx.inner.first_steps`), so their default here is the lever; it stays a lever
  for second-order MAML.
* ``inner-unroll``: the inner loop as straight-line code (``lax.scan``'s ``unroll=True`` in
  :func:`mamlx.inner.run`) instead of a loop, so XLA schedules and fuses across inner
  steps (only settings with more than one inner step differ: 20-way here).
* ``patch-statistics``: the first layer's batch-norm statistics from its patch matrix (the
  9 x 9 covariance of the taps-major patch rows and the kernel: ``mean = c̄ W + b``,
  ``var = diag(Wᵀ Σ W)``) instead of two passes over its ``(N·Ho·Wo, 64)`` output. It won
  (Reptile 20-way) and Conv-4 does it itself (:func:`mamlx.models.conv.conv2d_moments`), so
  the default here is the lever and the variant ``from-output`` is the block before it.
* ``chunked-patches``: the 64-channel convolutions of more than ``c`` images taken ``c``
  images at a time, each chunk under ``jax.checkpoint`` (its patch matrix cut again in the
  backward pass), so that each chunk's patch matrix (``c · Ho · Wo x 576`` floats) is
  written, multiplied and read back while it is still in the cache, instead of one
  ``N · Ho · Wo x 576`` matrix (34 MB for layer 2 of the 20-way query set, more than the
  32 MB L3 of the 2-core EPYC) kept from the forward pass to the backward one.

Usage::

    python benchmarks/levers_cpu.py --lever task-groups --settings omniglot-5w1s --algos fomaml
    python benchmarks/levers_cpu.py --lever bias-shift --rounds 4
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mamlx.runtime

mamlx.runtime.tune_host_allocator()  # before JAX computes anything, as throughput.py

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import throughput as tp  # noqa: E402
from jax import lax  # noqa: E402

import mamlx.algorithms.base as base  # noqa: E402
import mamlx.algorithms.reptile as reptile_mod  # noqa: E402
import mamlx.models.conv4 as conv4  # noqa: E402
from mamlx import inner  # noqa: E402
from mamlx.losses import task_metrics  # noqa: E402
from mamlx.models import conv  # noqa: E402


def _finish_without_bias(self, y, mask=None, moments=None):
    y = conv4.batch_norm(self.norm, y, False if self.transductive else None, mask, moments)
    y = jax.nn.relu(y)
    return conv4.max_pool_2x2(y) if self.pool == "max" else y


def _batch_norm_by_reductions(norm, x, use_running_average=None, mask=None, moments=None):
    if use_running_average or mask is not None or moments is not None:  # given or not timed
        return _REAL_BN(norm, x, use_running_average, mask, moments)
    flat = x.reshape(-1, x.shape[-1])
    mean = jnp.mean(flat, axis=0)
    var = jnp.maximum(jnp.mean(flat * flat, axis=0) - mean * mean, 0.0)
    mul = lax.rsqrt(var + norm.epsilon) * norm.scale[...]
    return (x - mean) * mul + norm.bias[...]


_REAL_BN = conv4.batch_norm
_REAL_CONV = conv4.conv2d


def _conv_after_barrier(x, kernel, **kw):
    if kernel.shape[0] * kernel.shape[1] * kernel.shape[2] > conv.TAPS_MAJOR_MAX_COLUMNS:
        x = lax.optimization_barrier(x)
    return _REAL_CONV(x, kernel, **kw)


def _conv_shifted_products(x, kernel, *, stride=1, padding="SAME", impl=None):
    kh, kw, cin, _ = kernel.shape
    if kh * kw * cin <= conv.TAPS_MAJOR_MAX_COLUMNS:
        return _REAL_CONV(x, kernel, stride=stride, padding=padding, impl=impl)
    pads = conv._pads(x.shape[1:3], (kh, kw), stride, padding)
    taps = conv._tap_slices(x, (1, 2), (kh, kw), stride, pads)
    return sum(jnp.dot(t, kernel[i // kw, i % kw]) for i, t in enumerate(taps))


def _conv_in_chunks(images: int):
    def conv_in_chunks(x, kernel, *, stride=1, padding="SAME", impl=None):
        kh, kw, cin, _ = kernel.shape
        n = x.shape[0]
        if kh * kw * cin <= conv.TAPS_MAJOR_MAX_COLUMNS or n <= images:
            return _REAL_CONV(x, kernel, stride=stride, padding=padding, impl=impl)
        one = jax.checkpoint(
            lambda xc, k: _REAL_CONV(xc, k, stride=stride, padding=padding, impl=impl)
        )
        return jnp.concatenate([one(x[i : i + images], kernel) for i in range(0, n, images)])

    return conv_in_chunks


def _grouped_map_tasks_mean(group: int):
    """``map_tasks_mean`` with ``vmap`` over ``group`` tasks per iteration of the loop."""

    def map_tasks_mean(fn, meta_params, episodes, task_map="vmap", key=None):
        if base.resolve_task_map(task_map) == "vmap":
            return _REAL_MAP_MEAN(fn, meta_params, episodes, task_map, key)
        task_fn, xs = base._per_task(fn, episodes, key)
        n = jax.tree.leaves(episodes)[0].shape[0]
        if n % group:
            raise ValueError(f"meta-batch {n} is not a multiple of the group {group}")
        first = jax.tree.map(lambda x: x[0], xs)
        shapes = jax.eval_shape(task_fn, meta_params, first)[0]

        def body(total, x):
            trees, metrics = jax.vmap(task_fn, in_axes=(None, 0))(meta_params, x)
            tree = jax.tree.map(lambda t: jnp.sum(t, axis=0), trees)
            return jax.tree.map(jnp.add, total, tree), metrics

        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        xs = jax.tree.map(lambda a: a.reshape(n // group, group, *a.shape[1:]), xs)
        total, metrics = jax.lax.scan(body, base.varying_like(zeros, episodes), xs)
        metrics = jax.tree.map(lambda a: a.reshape(n, *a.shape[2:]), metrics)
        return jax.tree.map(lambda t: t / n, total), base.mean_metrics(metrics)

    return map_tasks_mean


_REAL_MAP_MEAN = base.map_tasks_mean


def _groups(g: int):
    stack = contextlib.ExitStack()
    for mod in (base, reptile_mod):
        stack.enter_context(mock.patch.object(mod, "map_tasks_mean", _grouped_map_tasks_mean(g)))
    return stack


def _shared_first_meta_grad(apply_fn, algo: str, s: tp.Setting):
    """The setting's meta-gradient with the first inner step vectorized over tasks, through
    the library's own pieces (:func:`mamlx.inner.first_steps`, ``inner.run(..., first=)``)."""
    first_order = algo != "maml"

    def support_loss(p, x, y):
        return task_metrics(apply_fn(p, x), y)[0]

    def adapted(theta, l0, g0, ep):  # the inner loop, its first step's loss and gradient given
        args = (support_loss, theta, ep.support_x, ep.support_y)
        kw = dict(steps=s.inner_steps, optimizer=s.inner_lr, first_order=first_order)
        return inner.run(*args, first=(l0, g0), **kw).params

    def query(theta, l0, g0, ep):
        return task_metrics(apply_fn(adapted(theta, l0, g0, ep), ep.query_x), ep.query_y)

    def meta_grad(theta, episodes, key=None):
        n = episodes.support_x.shape[0]
        zeros = jax.tree.map(jnp.zeros_like, theta)
        first_steps = lambda th: inner.first_steps(
            support_loss, th, episodes.support_x, episodes.support_y
        )
        if algo == "reptile":

            def body(total, x):
                p = adapted(theta, *x)
                metrics = task_metrics(apply_fn(p, x[2].query_x), x[2].query_y)[1]
                return jax.tree.map(jnp.add, total, p), metrics

            total, metrics = lax.scan(body, zeros, (*first_steps(theta), episodes))
            return jax.tree.map(lambda p, t: p - t / n, theta, total), base.mean_metrics(metrics)
        first, back = jax.vjp(first_steps, theta)

        def body(total, x):
            argnums = 0 if first_order else (0, 1, 2)
            grads, metrics = jax.grad(query, argnums, has_aux=True)(theta, *x)
            direct, cot = (grads, None) if first_order else (grads[0], grads[1:])
            return jax.tree.map(jnp.add, total, direct), (cot, metrics)

        total, (cot, metrics) = lax.scan(body, zeros, (*first, episodes))
        if not first_order:  # the query losses' cotangents through the vectorized first step
            total = jax.tree.map(jnp.add, total, back(cot)[0])
        return jax.tree.map(lambda t: t / n, total), base.mean_metrics(metrics)

    return meta_grad


_REAL_LEARNER = tp._jax_learner


def _learner_with_shared_first_step(apply_fn, algo, s, task_map, init=lambda key: None):
    learner = _REAL_LEARNER(apply_fn, algo, s, task_map, init)
    return learner._replace(meta_grad=_shared_first_meta_grad(apply_fn, algo, s))


def _block_with_output_statistics(self, x, mask=None):
    """The block as before the patch-statistics lever was adopted: batch norm takes its
    statistics from the convolution's output, in every block."""
    return self.finish(self.convolve(x), mask)


_REAL_RUN = inner.run


def _run_unrolled(*args, **kw):
    return _REAL_RUN(*args, **{**kw, "unroll": True})


LEVERS = {  # lever -> {variant name: context manager factory}
    "bias-shift": {
        "no-bias": lambda: mock.patch.object(conv4.ConvBlock, "finish", _finish_without_bias)
    },
    "bn-reduce": {
        "reductions": lambda: mock.patch.object(conv4, "batch_norm", _batch_norm_by_reductions)
    },
    "task-groups": {f"groups-of-{g}": (lambda g=g: _groups(g)) for g in (2, 4, 8)},
    "patch-barrier": {"barrier": lambda: mock.patch.object(conv4, "conv2d", _conv_after_barrier)},
    "shifted-products": {
        "shifted": lambda: mock.patch.object(conv4, "conv2d", _conv_shifted_products)
    },
    "shared-first-step": {
        "vectorized": lambda: mock.patch.object(tp, "_jax_learner", _learner_with_shared_first_step)
    },
    "inner-unroll": {"unrolled": lambda: mock.patch.object(inner, "run", _run_unrolled)},
    "chunked-patches": {
        f"chunks-of-{c}": (lambda c=c: mock.patch.object(conv4, "conv2d", _conv_in_chunks(c)))
        for c in (25, 75)
    },
    "patch-statistics": {
        "from-output": lambda: mock.patch.object(
            conv4.ConvBlock, "__call__", _block_with_output_statistics
        )
    },
}


def build_variant(s: tp.Setting, algo: str, ctx, chunk: int):
    """``fit``'s chunk for setting ``s`` (throughput.py's, patches convolution, per-task loop)
    traced and compiled inside ``ctx()``; returns ``(compiled, state, data)``."""
    with ctx():
        run, state, data = tp._build_fit_chunk(s, algo, "patches", "map", chunk)
        return run.lower(state, data).compile(), state, data


def measure(setting: str, algo: str, lever: str, rounds: int, calls: int, chunk: int) -> dict:
    """tasks/s of the default step and of each variant of ``lever``: median and per-round range."""
    s = tp.SETTINGS[setting]
    variants = {"default": contextlib.nullcontext, **LEVERS[lever]}
    compiled = {}
    for name, ctx in variants.items():
        fn, state, data = build_variant(s, algo, ctx, chunk)
        state, _ = jax.block_until_ready(fn(state, data))  # warm-up
        compiled[name] = [fn, state, data]
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, entry in compiled.items():
            fn, state, data = entry
            per_round = []
            for _ in range(calls):
                t0 = time.perf_counter()
                state, _ = jax.block_until_ready(fn(state, data))
                per_round.append((time.perf_counter() - t0) / chunk)
            entry[1] = state
            times[name].append(per_round)
    out = {}
    for name, rs in times.items():
        med = statistics.median([t for r in rs for t in r])
        by_round = [s.meta_batch / statistics.median(r) for r in rs]
        out[name] = (s.meta_batch / med, min(by_round), max(by_round))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lever", choices=tuple(LEVERS), required=True)
    ap.add_argument("--settings", default="omniglot-5w1s,omniglot-20w1s")
    ap.add_argument("--algos", default="maml,fomaml,reptile")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--calls", type=int, default=2, help="timed chunks per variant and round")
    ap.add_argument("--chunk", type=int, default=tp.CHUNK)
    args = ap.parse_args(argv)
    print(f"# {' '.join(sys.argv)}\n# {tp.machine_info()}")
    for setting in args.settings.split(","):
        for algo in args.algos.split(","):
            res = measure(setting, algo, args.lever, args.rounds, args.calls, args.chunk)
            for name, (med, lo, hi) in res.items():
                print(f"{setting} {algo} {name:14s} {med:7.1f} tasks/s (rounds {lo:.1f}-{hi:.1f})")


if __name__ == "__main__":
    main()
