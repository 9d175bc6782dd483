"""Data parallelism over tasks: the task axis of a meta-batch is sharded over devices.

One code path serves 1 to N devices (and several hosts): parameters and optimizer
state are replicated, the sampled task batch is split along its leading (task)
axis, each device computes the learner's meta-gradient over its own tasks (with
``vmap`` or ``lax.map``, as the learner says) and the per-device means are
averaged (an all-reduce). On CPU, emulate devices with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``.
"""

from __future__ import annotations

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
    hosts = {d.process_index for d in devices}
    if len(hosts) < jax.process_count():  # the others would have nothing to compute on
        raise ValueError(
            f"the {len(devices)} devices of the mesh belong to {len(hosts)} of the "
            f"{jax.process_count()} processes; every process needs devices in it (all "
            "devices: task_mesh(), `mamlx train --devices 0`)"
        )
    return Mesh(np.asarray(devices), (AXIS,))


def split_cpu(count: int) -> None:
    """Make JAX's CPU backend ``count`` devices (``jax_num_cpu_devices``), as ``mamlx train
    --cpu-devices`` and ``benchmarks/throughput.py --cpu-devices`` do. With the task batch
    sharded over them (:func:`task_mesh`, ``--devices``) each device maps the learner over
    its own tasks and the cores share the work by tasks, not only inside each operation.

    Must run before JAX's first computation starts the backend; asking for the count the
    backend already has (a resumed run in the same process) does nothing.
    """
    if count < 1:
        raise ValueError(f"split_cpu needs a positive number of devices, got {count}")
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError as e:  # the backend runs already (which makes asking for it safe)
        if len(jax.devices("cpu")) == count:
            return
        raise ValueError(
            f"{count} CPU devices (--cpu-devices): JAX's CPU backend has already started in "
            f"this process with {len(jax.devices('cpu'))} device(s); the count is fixed from the "
            "first computation on (start a new process)"
        ) from e


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


def sharded_meta_grad(meta_grad, mesh: Mesh):
    """``meta_grad(params, episodes)`` over a task batch split across ``mesh``.

    Each device runs ``meta_grad`` on its ``meta_batch / devices`` tasks, then the
    gradients and metrics are averaged over devices (``lax.pmean``). Equal to the
    single-device ``meta_grad`` for learners whose meta-gradient and metrics are
    means over tasks (every mamlx learner). Written with ``shard_map`` rather than
    left to XLA's partitioner, which gathers the whole batch onto every device when
    the learner loops over tasks (``task_map="map"``).

    Args:
      meta_grad: a learner's ``meta_grad``.
      mesh: a mesh from :func:`task_mesh`.

    Returns:
      A function with ``meta_grad``'s signature, to call inside ``jit``.
    """

    def local(params, episodes):
        # Per-device copies: otherwise differentiating with respect to the replicated
        # params inside shard_map sums the inner-loop gradients over all devices' tasks.
        params = jax.lax.pcast(params, AXIS, to="varying")
        return jax.lax.pmean(meta_grad(params, episodes), AXIS)

    spec = PartitionSpec(AXIS)
    return jax.shard_map(
        local, mesh=mesh, in_specs=(PartitionSpec(), spec), out_specs=PartitionSpec()
    )


def _varying_axes(x: Any) -> set:
    mat = getattr(jax.typeof(x), "manual_axis_type", None)
    return set(getattr(mat, "varying", None) or ())


def varying_like(tree: Any, *inputs: Any) -> Any:
    """``tree`` marked as varying over the manual mesh axes its ``inputs`` vary over.

    Inside ``shard_map`` (see :func:`sharded_meta_grad`) a per-device task batch
    varies across devices; a scan carry or recurrent state started from constant
    zeros must have the type of the values computed from that batch. Outside
    ``shard_map``: ``tree`` as is.
    """
    axes: set = set()
    for leaf in jax.tree.leaves(inputs):
        axes |= _varying_axes(leaf)

    def cast(t):
        missing = axes - _varying_axes(t)
        return jax.lax.pcast(t, tuple(sorted(missing)), to="varying") if missing else t

    return jax.tree.map(cast, tree) if axes else tree


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place a pytree (params, optimizer state, dataset) on every device of ``mesh``.

    With several processes every process passes the same values; each places its copy
    on its own devices of the mesh.
    """
    return jax.device_put(tree, replicated(mesh))


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    heartbeat_timeout: int | None = None,
) -> int:
    """Start ``jax.distributed`` for a launch of several processes (hosts), once.

    Call it before anything else computes with JAX. Arguments left ``None`` are found by
    JAX on TPU pods, under SLURM and Open MPI (``JAX_COORDINATOR_ADDRESS`` gives the
    address elsewhere); the ``mamlx`` command passes ``--coordinator-address``,
    ``--num-processes`` and ``--process-id`` (defaults: ``$JAX_COORDINATOR_ADDRESS``,
    ``$JAX_NUM_PROCESSES``, ``$JAX_PROCESS_ID``). On CPU, collectives between processes
    go over TCP (JAX's default ``jax_cpu_collectives_implementation="gloo"``). When a
    process dies, the others' next collective fails at once if its connections dropped;
    one that hangs or cannot be reached counts as dead after ``heartbeat_timeout`` seconds
    and JAX ends the others. Run checkpoints and logs are then written by process 0 only.

    Args:
      coordinator_address: ``host:port`` of process 0, reachable from every process.
      num_processes: how many processes take part.
      process_id: this process's index, ``0 .. num_processes - 1``.
      heartbeat_timeout: seconds without a heartbeat after which a process counts as
        dead (JAX's default: 100).

    Returns:
      The number of processes.

    Example:
      Two processes on one machine, each running (``ID`` 0 and 1)::

        mamlx.sharding.initialize_distributed("127.0.0.1:12345", 2, ID)
    """
    if not jax.distributed.is_initialized():  # a second call (or the user's own) is a no-op
        timeout = (
            {} if heartbeat_timeout is None else {"heartbeat_timeout_seconds": heartbeat_timeout}
        )
        jax.distributed.initialize(coordinator_address, num_processes, process_id, **timeout)
    return jax.process_count()
