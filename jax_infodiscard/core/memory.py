"""How many images (and probes) one compiled call may hold in memory.

The solver's peak memory per image is dominated by the activations of the
network, held once per simultaneous evaluation: ``probes`` vector-Jacobian
products in ``init``, ``samples`` forward+backward passes with their
linearised twins in each iteration, ``budget_samples`` forward passes and
Jacobian-vector products in ``finish``, times the layers that share one
program. The activations of one forward pass are measured, without running
anything, as the bytes of every intermediate value of the feature
function's traced program (``jax.make_jaxpr``) on one image.

The budget is a fraction of the memory that is free now: the device's
``memory_stats()`` where the backend reports it (GPU, TPU), else the host's
available memory (``/proc/meminfo``; CPU), capped by the cgroup memory limit
of a container or a batch job. With ``chunk_size=None`` the engine
splits the images into host-looped chunks that fit, and the column-norm
probes into batches that fit a single image's share.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import jax
import jax.extend
import numpy as np

from jax_infodiscard.types import Array, FeatureFn

BUDGET_FRACTION = 0.5
"""Share of the free memory that the solver plans to use."""


class Plan(NamedTuple):
    """Images per compiled call and probes per batch of VJPs."""

    chunk_size: int
    probe_batch: int | None  # None: all probes at once


def activation_bytes(feature_fn: FeatureFn, image: Array) -> int:
    """Bytes of every intermediate value of one forward pass of one image.

    >>> import jax.numpy as jnp
    >>> fn = lambda x: {"a": jnp.tanh(x * 2.0)}
    >>> activation_bytes(fn, jnp.zeros((4, 4, 3)))  # two (1, 4, 4, 3) f32 arrays
    384
    """
    closed = jax.make_jaxpr(feature_fn)(image[None])
    total = 0

    def visit(jaxpr):
        nonlocal total
        for eqn in jaxpr.eqns:
            subs = list(jax.extend.core.jaxprs_in_params(eqn.params))
            for sub in subs:  # a call's outputs are its body's: count those
                visit(sub)
            if subs:
                continue
            for v in eqn.outvars:
                aval = v.aval
                if hasattr(aval, "shape") and hasattr(aval, "dtype"):
                    total += math.prod(aval.shape) * np.dtype(aval.dtype).itemsize

    visit(closed.jaxpr)
    return total


_CGROUP_ROOT = "/sys/fs/cgroup"
_SELF_CGROUP = "/proc/self/cgroup"
_MEMINFO = "/proc/meminfo"
_UNLIMITED = 1 << 60  # cgroup v1 reports "no limit" as a huge number


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max": no limit


def _inactive_file(folder: str, key: str) -> int:
    """Reclaimable page cache of a cgroup (``memory.stat``), 0 if unknown."""
    try:
        with open(os.path.join(folder, "memory.stat")) as f:
            for line in f:
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


def cgroup_free_bytes(
    root: str | None = None, self_cgroup: str | None = None
) -> int | None:
    """Memory left under this process's cgroup limit, or ``None`` if unlimited.

    Reads cgroup v2 (``memory.max`` and ``memory.current``) or v1
    (``memory/memory.limit_in_bytes`` and ``memory.usage_in_bytes``) for
    the process's cgroup (``/proc/self/cgroup``) and every ancestor, as a
    container or a Slurm job sets them; the tightest limit wins. Page cache
    that the kernel can reclaim (``inactive_file``) counts as free.

    Args:
      root: the cgroup mount (default ``/sys/fs/cgroup``).
      self_cgroup: the process's cgroup list (default ``/proc/self/cgroup``).
    """
    root = root or _CGROUP_ROOT
    try:
        with open(self_cgroup or _SELF_CGROUP) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    candidates = []  # (limit file, usage file, stat key, folder chain)
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        rel = rel.strip("/")
        if controllers == "":  # v2 unified hierarchy
            base, files = root, ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):
            base = os.path.join(root, "memory")
            files = (
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
                "total_inactive_file",
            )
        else:
            continue
        chain = [base]
        for part in rel.split("/") if rel else []:
            chain.append(os.path.join(chain[-1], part))
        candidates.append((files, chain))
    best = None
    for (limit_name, usage_name, stat_key), chain in candidates:
        for folder in chain:
            if not os.path.isdir(folder):
                continue  # a container sees its own cgroup at the mount
            limit = _read_int(os.path.join(folder, limit_name))
            if limit is None or limit >= _UNLIMITED:
                continue
            usage = _read_int(os.path.join(folder, usage_name)) or 0
            usage -= _inactive_file(folder, stat_key)
            free = max(0, limit - max(0, usage))
            best = free if best is None else min(best, free)
    return best


def host_free_bytes() -> int:
    """The host's available memory: ``MemAvailable``, capped by the cgroup."""
    avail = None
    try:
        with open(_MEMINFO) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        avail = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    limit = cgroup_free_bytes()
    return avail if limit is None else min(avail, limit)


def free_bytes() -> int:
    """Free memory of the first local device (or of the host for CPU).

    On CPU: the smaller of ``MemAvailable`` and what the cgroup memory
    limit (v1 or v2: a container, a Slurm job) leaves
    (:func:`host_free_bytes`).
    """
    device = jax.local_devices()[0]
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # backends without memory statistics
        stats = None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    return host_free_bytes()


def plan(
    feature_fn: FeatureFn,
    image: Array,
    *,
    num_images: int,
    layers_per_program: int,
    probes: int,
    samples: int,
    budget_samples: int,
    budget: int | None = None,
) -> Plan:
    """Chunk size and probe batch that keep the solver within ``budget`` bytes.

    Args:
      feature_fn: the feature function.
      image: one image ``(H, W, C)`` (only its shape is used).
      num_images: images to solve.
      layers_per_program: layers that share one compiled program.
      probes: column-norm probes per layer.
      samples: draws per iteration.
      budget_samples: held draws per evaluation.
      budget: bytes to plan for (default: ``BUDGET_FRACTION`` of
        :func:`free_bytes`).

    Returns:
      The :class:`Plan`: all images at once when they fit.
    """
    if budget is None:
        budget = int(BUDGET_FRACTION * free_bytes())
    act = max(1, activation_bytes(feature_fn, image)) * layers_per_program
    # Forward + backward keep about twice the activations; the control
    # variate's linearised twin doubles an iteration's share again.
    per_image = act * max(2 * probes, 4 * samples, 2 * budget_samples)
    chunk = int(max(1, min(num_images, budget // per_image)))
    probe_batch = None
    if 2 * probes * act > budget:
        probe_batch = int(max(1, budget // (2 * act)))
    return Plan(chunk, probe_batch)
