"""Process-level settings that keep JAX's CPU backend fast for meta-learning.

XLA's CPU runtime allocates the temporary buffers of a compiled step (hundreds
of MB for a meta-batch of convolutional tasks) afresh on every call, from the
C library's ``malloc``. glibc serves requests above 32 MB, and any large request
made from a worker thread's arena, with a fresh ``mmap`` and returns it with
``munmap`` when freed, so every step first-touches, page-faults and zeroes all
of its temporaries again: on a 2-core CPU that was about 30% of a second-order
MAML step (``benchmarks/throughput.py``; 910 ms -> 650 ms per Omniglot 5-way
1-shot step). :func:`tune_host_allocator` makes glibc keep such memory in one
heap and reuse it (``mallopt``: one arena, no ``mmap`` for large blocks, trim
only above 2 GB), the same effect as starting Python with::

    MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647

It is an explicit call: ``import mamlx`` changes nothing in the process. The
``mamlx`` command calls it before JAX computes anything (``mamlx --no-tune-malloc``
or ``MAMLX_TUNE_MALLOC=0`` skips that); a script calls it first thing, before
JAX's first computation creates its CPU thread pool (threads keep the arena they
started with, so later calls help only partly)::

    import mamlx
    mamlx.runtime.tune_host_allocator()

The cost: memory freed by the process goes back to the operating system only
above the trim threshold, so the resident size stays near its peak, as with a
caching allocator. Nothing happens on other C libraries or operating systems.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt(3) parameter numbers (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: 2 GB is the largest threshold

#: The same settings as environment variables, for a process that does not call
#: :func:`tune_host_allocator` (a child process, a PyTorch peer).
MALLOC_ENV = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(_TRIM_THRESHOLD),
}

_status: dict = {}


def _thread_count() -> int | None:
    """Threads of this process now (Linux ``/proc``), ``None`` where unknown."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def tune_host_allocator() -> dict:
    """Make glibc reuse large host buffers between calls instead of re-mapping them.

    Changes the C library's settings for the whole process, so it is never
    done on import; the ``mamlx`` command calls it, scripts may. Idempotent.
    Safe to call at any time; most effective before JAX runs its first
    computation.

    Returns:
        ``{}`` where it does not apply (not Linux with glibc), else
        ``{"arena_max": 1, "mmap_max": 0, "trim_threshold": 2147483647,
        "threads": int | None}``, where ``threads`` counts the process's threads
        at the first call (threads that already existed may keep an arena of
        their own). With jax 0.10.2 that is 2 after ``import mamlx`` and 17 (on
        2 cores) once JAX has computed on CPU and started its thread pool.

    Example:
        >>> status = tune_host_allocator()
        >>> status == {} or status["mmap_max"] == 0
        True
    """
    if _status:
        return dict(_status)
    if not sys.platform.startswith("linux"):
        return {}
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - raises AttributeError on musl etc.
    except (OSError, AttributeError):
        return {}
    threads = _thread_count()
    ok = (
        libc.mallopt(_M_ARENA_MAX, 1) == 1
        and libc.mallopt(_M_MMAP_MAX, 0) == 1
        and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    )
    if not ok:
        return {}
    _status.update(arena_max=1, mmap_max=0, trim_threshold=_TRIM_THRESHOLD, threads=threads)
    return dict(_status)


def release_host_memory() -> bool:
    """Give the C library's free heap pages back to the operating system (``malloc_trim``)
    where :func:`tune_host_allocator` keeps them in the process.

    The tuned allocator keeps freed buffers for reuse; after a large passing allocation,
    such as an evaluation between training chunks, the holes it leaves below live buffers
    stay resident and later allocations that do not fit them grow the process (measured:
    a freed 1 GiB buffer under a live one stays resident until this call). An Omniglot
    Reptile 5-way 5-shot run (validation batches of about 10 GB) was killed by the OOM
    killer at its third validation, at 24 GB on a 23 GB machine; these holes are the
    likely cause, not reproduced. The evaluator calls this after every run.

    Returns:
        whether anything was released (``False`` also where the allocator is not tuned).

    Example:
        >>> release_host_memory() in (True, False)
        True
    """
    if not _status:
        return False
    return bool(ctypes.CDLL(None).malloc_trim(0))


def host_allocator_status() -> dict:
    """What :func:`tune_host_allocator` set in this process (``{}`` if nothing).

    Example:
        >>> isinstance(host_allocator_status(), dict)
        True
    """
    return dict(_status)
