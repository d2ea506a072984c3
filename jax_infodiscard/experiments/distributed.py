"""Several processes, one job: JAX's distributed runtime for data-set runs.

``jax-infodiscard run`` spans processes (hosts, or GPUs of one host) with
:func:`jax.distributed.initialize`. Each process computes its own images on
its own devices; the runtime gives each process its index and the process
count, and barriers keep the processes in step where they share the run
folder (opening it, listing finished shards, merging the manifest).

On TPU pods, Slurm and Open MPI, :func:`initialize` needs no arguments
(``auto=True``: JAX detects the cluster); elsewhere pass the coordinator's
``host:port``, the number of processes and this process' index.
"""

from __future__ import annotations

import jax
import numpy as np

__all__ = ["all_ok", "barrier", "initialize", "process_count", "process_index"]


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto: bool = False,
    timeout_s: int = 300,
) -> bool:
    """Joins the distributed runtime, if asked to.

    Must run before any JAX computation in the process.

    Args:
      coordinator: ``host:port`` of process 0's coordinator service.
      num_processes: processes in the job.
      process_id: this process' index in ``[0, num_processes)``.
      auto: let JAX detect the cluster (TPU pod, Slurm, Open MPI).
      timeout_s: how long to wait for the other processes.

    Returns:
      Whether the runtime was initialised (False: single process, nothing
      asked).

    Raises:
      ValueError: only some of the three explicit arguments are given.
    """
    explicit = (coordinator, num_processes, process_id)
    if not auto and all(v is None for v in explicit):
        return False
    if not auto and any(v is None for v in explicit):
        raise ValueError(
            "multi-process runs need --coordinator, --num-processes and "
            "--process-id together (or --distributed-auto on a TPU pod, Slurm "
            "or Open MPI)"
        )
    if not auto and not 0 <= process_id < num_processes:
        raise ValueError(
            f"process-id must lie in [0, {num_processes}), got {process_id}"
        )
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=timeout_s,
    )
    return True


def process_index() -> int:
    """This process' index (0 in a single-process run)."""
    return jax.process_index()


def process_count() -> int:
    """Number of processes of the job (1 in a single-process run)."""
    return jax.process_count()


def barrier(name: str) -> None:
    """Waits until every process reached the barrier ``name`` (no-op alone)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def all_ok(ok: bool) -> bool:
    """Whether ``ok`` holds in every process (a collective; no-op alone)."""
    if jax.process_count() == 1:
        return bool(ok)
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.array([int(bool(ok))], np.int32))
    return bool(np.asarray(flags).min())
