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
