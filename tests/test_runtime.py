"""The host-allocator tuning of mamlx.runtime: large XLA temporaries are reused, not re-faulted.

Also: ``import mamlx`` has no process-wide side effects (no malloc settings, no environment
variables, no private JAX modules); the ``mamlx`` command tunes the allocator explicitly.
"""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

import mamlx

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
# mallinfo2, which the probes read the allocator's state with, came in glibc 2.33.
MALLINFO2 = GLIBC and tuple(int(v) for v in platform.libc_ver()[1].split(".")[:2]) >= (2, 33)

_PROBE = r"""
import json, os, resource, sys
import mamlx
import jax, jax.numpy as jnp

if sys.argv[1] == "tune":
    mamlx.runtime.tune_host_allocator()

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
threads = len(os.listdir("/proc/self/task"))
status = mamlx.runtime.host_allocator_status()
print(json.dumps({"status": status, "faults": faults, "threads": threads}))
"""

# Whether glibc serves a large block with mmap (its default) or from the heap (tuned), read
# with mallinfo2 (glibc >= 2.33): the allocator's real state, not mamlx's record of it.
_MMAPPED = r"""
import ctypes

class _Info(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]

_libc = ctypes.CDLL(None)
_libc.malloc.restype, _libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
_libc.free.argtypes = [ctypes.c_void_p]
_libc.mallinfo2.restype = _Info

def large_block_mmapped():
    before = _libc.mallinfo2().hblks
    block = _libc.malloc(64 << 20)
    mapped = _libc.mallinfo2().hblks > before
    _libc.free(block)
    return mapped
"""

# One fresh process (importing mamlx is most of a probe's time): import, then the CLI.
_IMPORT_PROBE = (
    _MMAPPED
    + r"""
import json, os
mapped_before = large_block_mmapped()
import mamlx
from mamlx import cli, runtime
out = {
    "mapped_before": mapped_before,
    "status_after_import": runtime.host_allocator_status(),
    "mapped_after_import": large_block_mmapped(),
    "conv_default": mamlx.models.conv.default_impl("cpu"),
}
missing = ["eval", "/nonexistent/mamlx-run"]  # fails fast with exit code 2, after the setup
out["cli_env_off"] = [cli.main(missing), runtime.host_allocator_status()]
del os.environ["MAMLX_TUNE_MALLOC"]
out["cli_flag_off"] = [cli.main(["--no-tune-malloc", *missing]), runtime.host_allocator_status()]
out["cli"] = [cli.main(missing), runtime.host_allocator_status()]
out["mapped_after_tune"] = large_block_mmapped()
print(json.dumps(out))
"""
)


def _run(code: str, *args: str, **env: str) -> dict:
    env = {**os.environ, **env}
    out = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _probe(tune: bool) -> dict:
    return _run(_PROBE, "tune" if tune else "plain")


def test_mamlx_source_uses_no_private_jax_modules():
    root = Path(mamlx.__file__).parent
    users = [str(f) for f in root.rglob("*.py") if "jax._src" in f.read_text()]
    assert not users


@pytest.mark.skipif(not MALLINFO2, reason="needs glibc >= 2.33 (mallinfo2)")
def test_import_changes_nothing_and_the_cli_tunes_unless_told_not_to():
    # The variables the library once read on import or at trace time: now read by the CLI only.
    got = _run(_IMPORT_PROBE, MAMLX_TUNE_MALLOC="0", MAMLX_CONV_IMPL="xla")
    assert got["mapped_before"] and got["mapped_after_import"], got  # glibc's defaults kept
    assert got["status_after_import"] == {} and got["conv_default"] == "patches", got
    assert got["cli_env_off"] == [2, {}] and got["cli_flag_off"] == [2, {}], got
    code, status = got["cli"]
    assert code == 2 and status["mmap_max"] == 0 and not got["mapped_after_tune"], got


@pytest.mark.skipif(not GLIBC, reason="glibc allocator tuning not available")
def test_tuned_allocator_reuses_large_buffers():
    pages = 4 * 4 * 1024 * 1024 * 4 / 4096  # pages of the step's temporaries
    tuned, plain = _probe(True), _probe(False)
    # Tuned before JAX's first computation started its CPU thread pool.
    assert tuned["status"]["mmap_max"] == 0 and tuned["status"]["threads"] < tuned["threads"]
    assert plain["status"] == {}
    # Untuned: every call maps and first-touches its temporaries afresh.
    assert plain["faults"] > 0.8 * pages, plain
    # Tuned: the heap keeps them; a call touches at most a new output buffer (a quarter).
    assert tuned["faults"] < 0.3 * pages, tuned


def test_tune_is_idempotent_and_reports_status():
    first = mamlx.runtime.tune_host_allocator()
    assert mamlx.runtime.tune_host_allocator() == first == mamlx.runtime.host_allocator_status()


def _rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not GLIBC, reason="glibc allocator tuning not available")
def test_release_host_memory_returns_freed_holes_the_tuned_heap_keeps():
    """Tuned (conftest tunes every test process), a freed 256 MiB buffer under a live one stays
    resident; release_host_memory gives it back."""
    import numpy as np

    assert mamlx.runtime.tune_host_allocator()["mmap_max"] == 0
    big = np.ones(2**25)  # 256 MiB, touched
    pin = np.ones(1000)  # allocated above it: the freed block is a hole, not the heap's top
    kept = _rss_mib()
    del big
    assert _rss_mib() > kept - 64  # still resident
    assert mamlx.runtime.release_host_memory()
    assert _rss_mib() < kept - 200
    del pin


def test_evaluator_releases_host_memory_after_every_run(monkeypatch):
    import jax

    from mamlx import evaluation, maml
    from mamlx.datasets import sinusoid_model
    from mamlx.tasks import sinusoid

    calls = []
    monkeypatch.setattr(evaluation, "release_host_memory", lambda: calls.append(1))
    learner = maml(*sinusoid_model((8,)), inner_lr=0.01, inner_steps=1)
    run = evaluation.make_evaluator(learner, sinusoid(5), batch_size=2)
    params = learner.init(jax.random.PRNGKey(0))
    for _ in range(2):
        run(params, None, key=jax.random.PRNGKey(1), num_tasks=3)
    assert len(calls) == 2
