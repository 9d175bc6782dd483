"""Shared test configuration.

Real data is found through one helper, :func:`data_dir`: ``$MAMLX_DATA_DIR`` if
set, else ``../shared/data`` beside the repository when it exists. On a user's
machine without the data, tests that need it skip with a reason; under CI
(``CI=true``) a missing data folder is a failure, never a silent skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import pytest

from mamlx.runtime import tune_host_allocator

# The tests check values, not the speed of the compiled code: XLA compiles without its LLVM
# optimizations (most of a small program's compile time on CPU). Set before JAX starts its
# backend, so the test processes and every subprocess they start (CLI runs, notebook
# kernels, two-process runs) inherit it. Measured on 2 cores: the suite's wall time falls by
# about a third (tests/test_registry.py alone: 191 s -> 118 s). MAMLX_TEST_OPTIMIZED=1 keeps
# XLA's defaults, to run the suite on the code users run.
#
# XLA:CPU's older fusion code generator (--xla_cpu_use_fusion_emitters=false) compiles a
# Conv-4 MAML meta-gradient in 1.8 s instead of 5.5 s at level 0 (same results, run time
# 0.12 s against 0.15 s); eight learner test modules: 255 -> 179 CPU seconds.
#
# At level 0 the compiled gradient of the 2x2 max-pool once came out NaN: max's own
# derivative found the maximum again by equality with a recomputed window; max_pool_2x2 now
# selects by argmax (mamlx/models/conv4.py, tests/test_conv.py).
FAST_COMPILE_FLAGS = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    " --xla_cpu_use_fusion_emitters=false"
)
_flags = os.environ.get("XLA_FLAGS", "")
if os.environ.get("MAMLX_TEST_OPTIMIZED", "") not in ("1", "true", "yes") and (
    FAST_COMPILE_FLAGS not in _flags  # xdist workers inherit it from the main process
):
    os.environ["XLA_FLAGS"] = f"{_flags} {FAST_COMPILE_FLAGS}".strip()

# As the `mamlx` command does before JAX computes anything: glibc keeps XLA's large
# temporaries for reuse instead of mapping them afresh every step (mamlx.runtime; import
# mamlx itself no longer does this). Test processes are not what tests/test_runtime.py
# checks: it probes a fresh interpreter.
tune_host_allocator()

REPO = Path(__file__).resolve().parent.parent

# Peak resident memory of one test process on the full suite (3.2 GB, measured) plus headroom.
GB_PER_WORKER = 4.5


def _available_memory_gb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # optional: plain pytest has no such hook
def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core, as many as memory allows; fewer than 2 runs in-process."""
    env = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS")
    if env:
        return int(env)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = _available_memory_gb()
    n = min(cpus or 1, int(mem // GB_PER_WORKER) if mem is not None else 1)
    return n if n >= 2 else 0


def data_dir(sub: str = "") -> Path:
    """Return the real-data folder (or a sub-folder), or skip / fail as described above."""
    env = os.environ.get("MAMLX_DATA_DIR")
    root = Path(env) if env else REPO.parent / "shared" / "data"
    path = root / sub if sub else root
    if not path.is_dir():
        msg = (
            f"real data folder {path} not found; set MAMLX_DATA_DIR to the folder "
            "holding omniglot/ and miniimagenet/"
        )
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg + " (CI=true: missing data is a failure)")
        pytest.skip(msg)
    return path


@pytest.fixture
def omniglot_dir() -> Path:
    return data_dir("omniglot")


@pytest.fixture
def miniimagenet_dir() -> Path:
    return data_dir("miniimagenet")


@pytest.fixture
def restore_matmul_precision():
    """Put JAX's global matrix-product precision back after a test that sets it."""
    before = jax.config.jax_default_matmul_precision
    yield
    jax.config.update("jax_default_matmul_precision", before)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Keep the tests' preprocessed-data and compilation caches out of the user's home.

    The library reads no environment variable: its default cache root
    (``mamlx.tasks.cache.DEFAULT_CACHE_ROOT``) is pointed at a private folder for the
    in-process tests, and ``$MAMLX_CACHE`` is set for the CLI (which passes it on) and
    for subprocesses. A ``$MAMLX_CACHE`` set by the caller is used for both.
    """
    from mamlx.tasks import cache

    set_here = "MAMLX_CACHE" not in os.environ
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    if set_here:  # one for all xdist workers (cache writes are atomic): Omniglot decoded once
        (shared / "mamlx_cache").mkdir(exist_ok=True)
        os.environ["MAMLX_CACHE"] = str(shared / "mamlx_cache")
    default = cache.DEFAULT_CACHE_ROOT
    cache.DEFAULT_CACHE_ROOT = Path(os.environ["MAMLX_CACHE"])
    # One persistent compilation cache for the whole run, shared by the xdist workers and
    # the CLI subprocesses: many tests compile the same programs (a learner's step on the
    # same small network), and a fresh function object misses JAX's in-memory cache.
    jax_cache = "MAMLX_JAX_CACHE" not in os.environ
    if jax_cache:
        os.environ["MAMLX_JAX_CACHE"] = str(shared / "jax-cache")
    jax.config.update("jax_compilation_cache_dir", os.environ["MAMLX_JAX_CACHE"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    yield
    cache.DEFAULT_CACHE_ROOT = default
    if set_here:
        del os.environ["MAMLX_CACHE"]
    if jax_cache:
        del os.environ["MAMLX_JAX_CACHE"]


@pytest.fixture(autouse=True, scope="module")
def _drop_compiled_programs():
    """Free each module's compiled programs after it, bounding a worker's memory."""
    yield
    jax.clear_caches()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """With ``$MAMLX_TEST_CPU_LOG`` set, append a line per test to that file: its CPU seconds
    (this process and the subprocesses it waited for: a cost that the machine's other load
    does not inflate as it does wall time, to find what makes the suite slow), its start and
    end on the wall clock (to see a worker's idle time) and the xdist worker that ran it."""
    path = os.environ.get("MAMLX_TEST_CPU_LOG")
    if not path:
        yield
        return
    import resource
    import time

    def cpu() -> float:
        own, kids = (
            resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        )
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    start, wall = cpu(), time.time()
    yield
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(path, "a") as f:
        f.write(f"{cpu() - start:.2f}\t{wall:.2f}\t{time.time():.2f}\t{worker}\t{item.nodeid}\n")


def pytest_collection_modifyitems(config, items):
    """Start the longest tests first (those marked ``slow``, in their collected order).

    With ``-n`` the first half of the collection goes to one worker and the second to the
    other, and an idle worker takes the tail of the other's queue: a long test near the end
    would keep one worker busy while the other waits. Longest first leaves short tests to
    balance the end of the run."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable
