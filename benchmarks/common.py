"""Helpers shared by the benchmark scripts: machine description and results files."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` (falls back to ``platform``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """One line naming the CPU/GPU, core count and library versions."""
    import jax

    cpu = cpu_name()
    dev = jax.devices()[0]
    accel = f"{dev.platform}: {getattr(dev, 'device_kind', dev.platform)}"
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    return (
        f"{cpu}, {os.cpu_count()} cores, load {load:.1f}; {accel}; "
        f"jax {jax.__version__}, python {platform.python_version()}"
    )


def git_rev() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_results(name: str, markdown: str, data: dict) -> Path:
    """Write ``results/<name>.md`` and ``results/<name>.json``; return the Markdown path."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")
    path = RESULTS / f"{name}.md"
    path.write_text(markdown)
    return path
