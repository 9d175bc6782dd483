"""The first Conv-4 block with batch-norm statistics from its patches, against from its output.

``ConvBlock`` takes the first block's batch statistics from the taps-major patch matrix
(:func:`mamlx.models.conv.conv2d_moments`); the alternative is two passes over the
``(N·14·14, 64)`` output (``block.finish(block.convolve(x))``). This times both, jitted,
interleaved in one process: the forward pass and the gradient (parameters, a fixed
cotangent) on N Omniglot-sized images, and the gradient of 32 tasks at once with the
parameters shared (``vmap``, as the first inner step of all tasks). The step-level effect is in
``benchmarks/results/throughput_levers_cpu.md`` (``levers_cpu.py --lever patch-statistics``).

``--image``, ``--filters`` and ``--pool`` time other first blocks (the patches path forced
where the library leaves it off: RGB, ``conv_moments_cpu_rgb.txt``).

Usage::

    python benchmarks/conv_moments.py --rounds 7
    python benchmarks/conv_moments.py --image 84,84,3 --filters 32 --pool max --sizes 5,25,75
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import mamlx.runtime

mamlx.runtime.tune_host_allocator()

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from throughput import cpu_name  # noqa: E402

from mamlx.models.conv4 import ConvBlock  # noqa: E402

# Both paths forced (the library picks one by moments_from_patches: RGB keeps the output's).
PATHS = {
    "from-output": lambda b, x: b.finish(b.convolve(x)),
    "from-patches": lambda b, x: b.call_with_patch_statistics(x),
}


def programs(sizes, tasks: int, image=(28, 28, 1), filters: int = 64, pool: str = "stride"):
    """``{(N, kind, path): (jitted function, args)}``."""
    block = ConvBlock(image[-1], filters, pool=pool, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(block)
    out = {}
    for n in sizes:
        x = jax.random.uniform(jax.random.key(1), (n, *image))
        shape = jax.eval_shape(
            lambda s, x: PATHS["from-output"](nnx.merge(graphdef, s), x), state, x
        ).shape
        ct = jax.random.normal(jax.random.key(2), shape)
        for name, path in PATHS.items():

            def fwd(s, x, path=path):
                return path(nnx.merge(graphdef, s), x)

            def loss(s, x, ct, fwd=fwd):
                return jnp.vdot(fwd(s, x), ct)

            out[(n, "forward", name)] = (jax.jit(fwd), (state, x))
            out[(n, "gradient", name)] = (jax.jit(jax.grad(loss)), (state, x, ct))
            if n <= 20:
                batched = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0)))
                xs, cts = (jnp.broadcast_to(a, (tasks, *a.shape)) for a in (x, ct))
                out[(n, f"gradient x{tasks} tasks", name)] = (batched, (state, xs, cts))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="5,20,75,300", help="images per batch")
    ap.add_argument("--tasks", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--image", default="28,28,1", help="H,W,C (mini-ImageNet: 84,84,3)")
    ap.add_argument("--filters", type=int, default=64)
    ap.add_argument("--pool", default="stride", choices=("stride", "max"))
    args = ap.parse_args(argv)
    image = tuple(int(v) for v in args.image.split(","))
    sizes = [int(n) for n in args.sizes.split(",")]
    fns = programs(sizes, args.tasks, image, args.filters, args.pool)
    for fn, a in fns.values():
        jax.block_until_ready(fn(*a))
    times = {k: [] for k in fns}
    for _ in range(args.rounds):
        for key, (fn, a) in fns.items():
            reps = max(3, 600 // key[0])
            t0 = time.perf_counter()
            for _ in range(reps):
                jax.block_until_ready(fn(*a))
            times[key].append((time.perf_counter() - t0) / reps * 1e3)
    print(f"# {' '.join(sys.argv)}\n# {cpu_name()}, {os.cpu_count()} cores, jax {jax.__version__}")
    print(f"# median of {args.rounds} interleaved rounds, ms")
    for n, kind in dict.fromkeys((k[0], k[1]) for k in fns):
        a, b = (statistics.median(times[(n, kind, p)]) for p in PATHS)
        print(f"N={n:4d} {kind:20s} from output {a:8.3f}  from patches {b:8.3f}  {a / b:.2f}x")


if __name__ == "__main__":
    main()
