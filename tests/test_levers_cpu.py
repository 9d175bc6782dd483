"""benchmarks/levers_cpu.py: every lever computes the training step the default computes (so
its timing compares like with like), changes the compiled program, and leaves mamlx as it was."""

import sys
from dataclasses import replace

import numpy as np
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import levers_cpu  # noqa: E402
import throughput  # noqa: E402

# 9x9 images, 4 filters (the patched 3x3x4 = 36-column layers take the patches path), 8 tasks.
TINY = replace(throughput.CHECK, name="tiny-levers", image=(9, 9, 1), classes=6, meta_batch=8)
VARIANTS = [(lever, name) for lever, vs in levers_cpu.LEVERS.items() for name in vs]


_DEFAULT = []  # the default step's (losses, program), compiled once for all levers


def _losses(ctx):
    fn, state, data = levers_cpu.build_variant(TINY, "fomaml", ctx, chunk=3)
    _, metrics = fn(state, data)
    return np.asarray(metrics["loss"]), fn.as_text()


def _default():
    if not _DEFAULT:
        _DEFAULT.append(_losses(levers_cpu.contextlib.nullcontext))
    return _DEFAULT[0]


@pytest.mark.parametrize("lever, name", VARIANTS)
def test_lever_trains_the_same_step_in_another_program(lever, name):
    want, default_program = _default()
    before = (levers_cpu.conv4.batch_norm, levers_cpu.conv4.conv2d, levers_cpu.base.map_tasks_mean)
    got, program = _losses(levers_cpu.LEVERS[lever][name])
    # Three Adam steps from the same state: the losses of the same function, up to float32
    # round-off (the bias lever drops a term that cancels exactly). Measured (jax 0.10.2, CPU):
    # largest relative difference 7.9e-6 (groups of 2), 0 for the barrier.
    np.testing.assert_allclose(got, want, rtol=5e-5)
    assert program != default_program
    after = (levers_cpu.conv4.batch_norm, levers_cpu.conv4.conv2d, levers_cpu.base.map_tasks_mean)
    assert after == before and levers_cpu.reptile_mod.map_tasks_mean is before[2]
    assert levers_cpu.conv4.ConvBlock.finish is not levers_cpu._finish_without_bias
    assert levers_cpu.conv4.ConvBlock.__call__ is not levers_cpu._block_with_output_statistics
    assert levers_cpu.inner.run is levers_cpu._REAL_RUN


@pytest.mark.slow
def test_shared_first_step_is_maml_s_meta_gradient():
    """Against second-order MAML's own per-task loop, in float64 so that round-off cannot hide
    a wrong term: three inner steps (the vectorized first and two looped), the query losses'
    cotangents sent back through the vectorized step. (First-order MAML and Reptile take their
    first step this way themselves: tests/test_maml.py, tests/test_reptile_metasgd_anil.py.)"""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from mamlx import Episode
    from mamlx.models import functional

    s = replace(TINY, ways=3, shots=2, queries=3, meta_batch=4, inner_steps=3)
    with jax.enable_x64(True):
        model = levers_cpu.conv4.Conv4(s.ways, in_shape=s.image, filters=4, rngs=nnx.Rngs(0))
        apply_fn, params = functional(model)
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        sx, sy, qx, qy = throughput.make_batch(s)
        batch = Episode(jnp.asarray(sx, jnp.float64), sy, jnp.asarray(qx, jnp.float64), qy)
        learner = throughput._jax_learner(apply_fn, "maml", s, "map")
        want, want_m = jax.jit(learner.meta_grad)(params, batch)
        got, got_m = jax.jit(levers_cpu._shared_first_meta_grad(apply_fn, "maml", s))(params, batch)
        # The conv biases' gradients are zero (batch norm cancels them): absolute tolerance
        # relative to the largest entry. Measured (jax 0.10.2, CPU): largest difference 1.4e-15
        # of the largest entry, losses 1.7e-16 apart.
        scale = max(float(jnp.max(jnp.abs(w))) for w in jax.tree.leaves(want))
        for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12 * scale)
        np.testing.assert_allclose(got_m["loss"], want_m["loss"], rtol=1e-12)


def test_conv_moments_benchmark_times_two_paths_to_the_same_values():
    """benchmarks/conv_moments.py compares like with like: the block's statistics from its
    output and from its patches give the same forward pass and gradients."""
    import conv_moments
    import jax

    fns = conv_moments.programs([5], tasks=2)
    for kind in ("forward", "gradient", "gradient x2 tasks"):
        (f, a), (g, b) = (fns[(5, kind, path)] for path in conv_moments.PATHS)
        want, got = jax.tree.leaves(f(*a)), jax.tree.leaves(g(*b))
        # The conv bias's gradient is float32 noise (batch norm cancels it; 1.2e-3 against a
        # largest kernel entry of 448, measured): absolute tolerance from the largest entry.
        # Measured largest differences: 8e-6 of the largest entry (kernel), 1.3e-5 (forward).
        scale = max(float(np.max(np.abs(w))) for w in want)
        for w, g in zip(want, got, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * scale)
