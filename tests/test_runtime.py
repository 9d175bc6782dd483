"""The host-allocator tuning of mamlx.runtime: large XLA temporaries are reused, not re-faulted."""

import json
import os
import subprocess
import sys

import pytest

import mamlx

_PROBE = r"""
import json, resource
import mamlx
import jax, jax.numpy as jnp

@jax.jit
def step(x):  # like a training step: large temporaries inside, a small carried state
    h = jnp.tanh(x[None] * jnp.arange(1.0, 5.0)[:, None, None])  # 4 x 16 MB temporaries
    return x + 0.001 * h.mean(0)

x = jnp.ones((4 * 1024, 1024))
for _ in range(6):
    x = jax.block_until_ready(step(x))
faults = []
for _ in range(8):
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = jax.block_until_ready(step(x))
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
faults = sorted(faults)[len(faults) // 2]  # median call
print(json.dumps({"status": mamlx.runtime.host_allocator_status(), "faults": faults}))
"""


def _probe(tune: bool) -> dict:
    env = {**os.environ, "MAMLX_TUNE_MALLOC": "1" if tune else "0"}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    not mamlx.runtime.host_allocator_status(), reason="glibc allocator tuning not available"
)
def test_tuned_allocator_reuses_large_buffers():
    pages = 4 * 4 * 1024 * 1024 * 4 / 4096  # pages of the step's temporaries
    tuned, plain = _probe(True), _probe(False)
    assert tuned["status"]["mmap_max"] == 0 and tuned["status"]["backend_started"] is False
    assert plain["status"] == {}
    # Untuned: every call maps and first-touches its temporaries afresh.
    assert plain["faults"] > 0.8 * pages, plain
    # Tuned: the heap keeps them; a call touches at most a new output buffer (a quarter).
    assert tuned["faults"] < 0.3 * pages, tuned


def test_tune_is_idempotent_and_reports_status():
    first = mamlx.runtime.tune_host_allocator()
    assert mamlx.runtime.tune_host_allocator() == first == mamlx.runtime.host_allocator_status()
