"""Reproducer: a compiled gradient of the Conv-4 embedding on 720 Omniglot-sized images that
disagrees with the eager one on CPU.

Found by ``benchmarks/verification.py``: Siamese training on 360 pairs (both images of every
pair embedded in one call of 720 images) went NaN at step 2. Under ``jax.jit`` the gradient of
``mean(|e1 − e2| · w)`` differed from call to call (NaN, 13.9, 2.9e25, ...) while the eager
gradient was finite and stable; 128 and 256 pairs agreed.

Cause, found 2026-12-02: the Conv-4 embedding's 2x2 max-pool was a reshape and ``max``, whose
derivative finds the maximum again by equality with the forward value and divides by the
number found; when the compiled program recomputed a window in another rounding it found
none, 0/0 = NaN. ``max_pool_2x2`` now selects by argmax; since then the three compiled values
agree with the eager one (360 pairs: eager 0.454364, compiled 0.454365 three times). Both convolution implementations
(``patches`` and XLA's) and a plain-``jnp`` batch norm showed it, on a 2-core AMD EPYC with
jax 0.10.2 (2026-12-01), with other jobs running. Prints the eager value and three compiled ones.

    python benchmarks/repro_cpu_large_batch.py [--pairs 360]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from mamlx.algorithms.siamese import pair_sampler
from mamlx.models import ConvEmbedding, model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=360)
    args = p.parse_args(argv)
    n = args.pairs
    data = jnp.asarray(np.random.default_rng(0).random((100, 20, 28, 28, 1)).astype(np.float32))
    f, init = model(lambda r: ConvEmbedding(1, filters=64, rngs=r))
    params = {"embed": init(jax.random.PRNGKey(1)), "weight": -jnp.ones(64) / 8}
    pairs = pair_sampler(n).sample(jax.random.PRNGKey(0), data)
    x = jnp.concatenate([pairs.x1, pairs.x2])

    def loss(p):
        emb = f(p["embed"], x)
        return jnp.mean(jnp.abs(emb[:n] - emb[n:]) @ p["weight"])

    probe = lambda g: float(jnp.abs(g["embed"]["blocks"][0]["kernel"]).max())
    eager = probe(jax.grad(loss)(params))
    compiled = jax.jit(jax.grad(loss))
    runs = [probe(compiled(params)) for _ in range(3)]
    ok = all(np.isfinite(r) and abs(r - eager) <= 1e-3 * abs(eager) for r in runs)
    print(
        f"{n} pairs: eager {eager:.6g}, compiled {', '.join(f'{r:.6g}' for r in runs)}: "
        f"{'agree' if ok else 'DISAGREE'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
