"""Data parallelism over tasks: the task axis of a meta-batch is sharded over devices.

One code path serves 1 to N devices (and several hosts): parameters and optimizer
state are replicated, the sampled task batch is constrained to be split along its
leading (task) axis, and XLA's SPMD partitioner inserts the all-reduce of the
meta-gradient. On CPU, emulate devices with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "tasks"


def task_mesh(devices: Sequence[jax.Device] | int | None = None) -> Mesh:
    """A 1-D mesh named ``"tasks"`` over ``devices`` (default: all devices, every host).

    Args:
      devices: a list of devices, a number of (leading) devices, or ``None`` for all.

    Returns:
      A :class:`jax.sharding.Mesh`.
    """
    all_devices = jax.devices()
    if devices is None:
        devices = all_devices
    elif isinstance(devices, int):
        if not 1 <= devices <= len(all_devices):
            raise ValueError(f"asked for {devices} devices, {len(all_devices)} available")
        devices = all_devices[:devices]
    return Mesh(np.asarray(devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def by_task(mesh: Mesh) -> NamedSharding:
    """Sharding that splits the leading (task) axis over ``mesh``."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def shard_tasks(tree: Any, mesh: Mesh) -> Any:
    """Constrain every leaf's leading axis to be split over the mesh (inside ``jit``)."""
    return jax.lax.with_sharding_constraint(tree, by_task(mesh))


def check_divisible(meta_batch: int, mesh: Mesh) -> None:
    """Raise if the meta-batch cannot be split evenly over the mesh."""
    if meta_batch % mesh.size:
        raise ValueError(
            f"meta_batch={meta_batch} is not divisible by the {mesh.size} devices of the mesh"
        )


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place a pytree (params, optimizer state, dataset) on every device of ``mesh``."""
    return jax.device_put(tree, replicated(mesh))


def initialize_distributed() -> bool:
    """Call ``jax.distributed.initialize()`` when launched as one of several processes.

    Detects the usual launch variables (``JAX_COORDINATOR_ADDRESS``, SLURM, Open MPI,
    TPU pods auto-detect through JAX itself). Returns whether it initialised.
    """
    launched = any(
        os.environ.get(v)
        for v in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")
    )
    if launched:
        jax.distributed.initialize()
    return bool(launched)
