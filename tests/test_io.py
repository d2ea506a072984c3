"""Atomic writes: round trips, failures and a kill -9 in the middle of a write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from matplotlib.figure import Figure

from jax_infodiscard import io


def _strays(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_json_round_trip_is_strict_json(tmp_path):
    obj = {
        "a": np.float32(0.25),
        "b": np.arange(3),
        "c": (1, 2),
        "nan": float("nan"),
        "inf": np.float64(np.inf),
        "flag": np.bool_(True),
        "path": tmp_path,
    }
    io.write_json(tmp_path / "x.json", obj)
    text = (tmp_path / "x.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    back = json.loads(text)
    assert back == {
        "a": 0.25,
        "b": [0, 1, 2],
        "c": [1, 2],
        "nan": None,
        "inf": None,
        "flag": True,
        "path": str(tmp_path),
    }
    with pytest.raises(TypeError, match="object"):
        io.write_json(tmp_path / "y.json", {"x": object()})
    assert not (tmp_path / "y.json").exists() and not _strays(tmp_path)


def test_npz_text_bytes_and_figure(tmp_path):
    io.write_npz(tmp_path / "a.npz", w=np.eye(3), n=np.int32(4))
    with np.load(tmp_path / "a.npz") as f:
        np.testing.assert_array_equal(f["w"], np.eye(3))
        assert int(f["n"]) == 4
    io.write_text(tmp_path / "t.md", "é\n")
    assert (tmp_path / "t.md").read_text(encoding="utf-8") == "é\n"
    io.write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    fig = Figure(figsize=(1, 1))
    fig.subplots().plot([0, 1])
    io.write_figure(tmp_path / "f.png", fig, dpi=50)
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not _strays(tmp_path)


def test_permissions_follow_the_umask(tmp_path):
    io.write_text(tmp_path / "p.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "p.txt").stat().st_mode & 0o777 == 0o666 & ~mask


def test_atomic_path_keeps_the_suffix_for_writers_that_append_it(tmp_path):
    with io.atomic_path(tmp_path / "r.npz") as tmp:
        assert tmp.suffix == ".npz" and tmp.parent == tmp_path
        np.savez(tmp, x=np.ones(2))  # would append ".npz" to another suffix
    with np.load(tmp_path / "r.npz") as f:
        np.testing.assert_array_equal(f["x"], np.ones(2))
    assert not _strays(tmp_path)


def test_a_failing_writer_leaves_the_old_file(tmp_path):
    target = tmp_path / "good.bin"
    io.write_bytes(target, b"old")
    with pytest.raises(RuntimeError), io.atomic_open(target) as fh:
        fh.write(b"half of the new")
        raise RuntimeError("writer died")
    assert target.read_bytes() == b"old"
    assert not _strays(tmp_path)


def test_kill_9_during_writes_never_leaves_a_torn_file(tmp_path):
    # A child rewrites one 4 MB file over and over, alternating two payloads;
    # after kill -9 the file must hold one whole payload.
    target = tmp_path / "big.bin"
    code = textwrap.dedent(
        f"""
        import sys
        from jax_infodiscard import io
        size = 4 * 2**20
        io.write_bytes({str(target)!r}, b"A" * size)
        print("ready", flush=True)
        i = 0
        while True:
            io.write_bytes({str(target)!r}, (b"B" if i % 2 == 0 else b"A") * size)
            i += 1
        """
    )
    env = os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, env=env
    )
    try:
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(0.4)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    data = target.read_bytes()
    assert len(data) == 4 * 2**20
    assert data in (b"A" * len(data), b"B" * len(data))
