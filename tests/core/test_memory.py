"""Memory planning: chunk sizes and probe batches from the free memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from conftest import SHORT, convnet_features
from jax.tree_util import Partial

import jax_infodiscard as jid
from jax_infodiscard.core import memory


def test_activation_bytes_counts_every_intermediate(convnet):
    fn = Partial(convnet_features, convnet)
    got = memory.activation_bytes(fn, jnp.zeros((8, 8, 3)))
    # conv outputs: 8x8x8, 4x4x8, 2x2x16 floats, each materialised three
    # times (conv, + bias, relu); plus the input shift x - 0.5 (8x8x3) and
    # the broadcast biases (8 + 8 + 16).
    outputs = (8 * 8 * 8 + 4 * 4 * 8 + 2 * 2 * 16) * 4
    assert got == 3 * outputs + (8 * 8 * 3 + 8 + 8 + 16) * 4


def test_plan_fits_the_budget(convnet):
    fn = Partial(convnet_features, convnet)
    x = jnp.zeros((8, 8, 3))
    act = memory.activation_bytes(fn, x)
    kw = dict(num_images=100, layers_per_program=1, probes=64, samples=8)
    per_image = act * max(2 * 64, 4 * 8, 2 * 32)
    plan = memory.plan(fn, x, budget_samples=32, budget=10 * per_image, **kw)
    assert plan == memory.Plan(10, None)
    plan = memory.plan(fn, x, budget_samples=32, budget=10**15, **kw)
    assert plan == memory.Plan(100, None)
    tight = memory.plan(fn, x, budget_samples=32, budget=20 * act, **kw)
    assert tight == memory.Plan(1, 10)


def test_planned_chunks_give_the_same_maps(cnn, small_images, monkeypatch):
    # The shared short solve: `whole` reuses the programs compiled for it.
    fn, cfg = cnn, SHORT
    key = jax.random.key(3)
    whole = jid.cid(fn, small_images, key, config=cfg.replace(chunk_size=3))
    act = memory.activation_bytes(fn, small_images[0]) * 3
    # Room for one image at a time, and for 16 probes of the column norms.
    monkeypatch.setattr(memory, "free_bytes", lambda: 2 * 32 * act)
    assert memory.plan(
        fn,
        small_images[0],
        num_images=3,
        layers_per_program=3,
        probes=64,
        samples=8,
        budget_samples=8,
    ) == memory.Plan(1, 16)
    planned = jid.cid(fn, small_images, key, config=cfg)
    np.testing.assert_allclose(planned.pixel, whole.pixel, atol=1e-3)


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_limit_caps_the_free_memory(tmp_path, monkeypatch):
    root, job = tmp_path / "cg", tmp_path / "cg" / "slurm" / "job_7"
    _write(tmp_path / "self", "0::/slurm/job_7\n")
    _write(root / "slurm" / "memory.max", "max\n")  # no limit above the job
    _write(job / "memory.max", str(4 << 30))
    _write(job / "memory.current", str(3 << 30))
    _write(job / "memory.stat", f"anon 1\ninactive_file {1 << 30}\n")
    free = memory.cgroup_free_bytes(str(root), str(tmp_path / "self"))
    assert free == 2 << 30  # 4 GiB limit - (3 GiB used - 1 GiB reclaimable)
    # free_bytes on CPU: the smaller of MemAvailable and the cgroup's room
    monkeypatch.setattr(memory, "_CGROUP_ROOT", str(root))
    monkeypatch.setattr(memory, "_SELF_CGROUP", str(tmp_path / "self"))
    _write(tmp_path / "meminfo", "MemTotal: 99 kB\nMemAvailable: 67108864 kB\n")
    monkeypatch.setattr(memory, "_MEMINFO", str(tmp_path / "meminfo"))
    assert memory.host_free_bytes() == 2 << 30
    _write(tmp_path / "meminfo", "MemAvailable: 1048576 kB\n")  # 1 GiB
    assert memory.host_free_bytes() == 1 << 30
    if jax.default_backend() == "cpu":
        assert memory.free_bytes() == 1 << 30


def test_cgroup_v1_limit_the_tightest_ancestor_wins(tmp_path):
    mem = tmp_path / "cg" / "memory"
    _write(tmp_path / "self", "4:memory:/docker/abc\n3:cpu:/docker/abc\n")
    _write(mem / "memory.limit_in_bytes", "9223372036854771712\n")  # unlimited
    _write(mem / "docker" / "memory.limit_in_bytes", str(1 << 30))
    _write(mem / "docker" / "memory.usage_in_bytes", str(1 << 28))
    _write(mem / "docker" / "abc" / "memory.limit_in_bytes", str(8 << 30))
    _write(mem / "docker" / "abc" / "memory.usage_in_bytes", str(1 << 28))
    free = memory.cgroup_free_bytes(str(tmp_path / "cg"), str(tmp_path / "self"))
    assert free == (1 << 30) - (1 << 28)
    # Inside a container the own cgroup is mounted at the root; no limit: None.
    _write(tmp_path / "self", "4:memory:/not/mounted/here\n")
    assert (
        memory.cgroup_free_bytes(str(tmp_path / "cg"), str(tmp_path / "self")) is None
    )
    _write(mem / "memory.limit_in_bytes", str(2 << 30))
    assert (
        memory.cgroup_free_bytes(str(tmp_path / "cg"), str(tmp_path / "self"))
        == 2 << 30
    )
    assert (
        memory.cgroup_free_bytes(str(tmp_path / "cg"), str(tmp_path / "none")) is None
    )
