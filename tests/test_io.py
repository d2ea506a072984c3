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


# ------------------------------------- issue 23: strict, versioned result files


def _result(per_channel=False):
    from jax_infodiscard.core.results import _ARRAYS, CIDResult

    rng = np.random.default_rng(0)
    maps = (2, 3, 4, 5, 2) if per_channel else (2, 3, 4, 5)
    pixel = rng.normal(size=maps).astype(np.float32)
    fields = {k: rng.uniform(size=(2, 3)).astype(np.float32) for k in _ARRAYS}
    fields |= {
        "pixel": pixel,
        "sigma": np.exp(pixel),
        "pixel_se": np.full(maps, 0.01, np.float32),
        "mean": pixel.mean(axis=tuple(range(2, pixel.ndim))),
        "total": pixel.sum(axis=tuple(range(2, pixel.ndim))) * 3,
        "converged": np.ones((2, 3), bool),
        "passes": np.full((2, 3), 7, np.int32),
    }
    return CIDResult(layers=("a", "b"), beta=1e-3, units=3, method="linear", **fields)


def _rewrite(path, meta_changes=None, *, rechecksum=True, **array_changes):
    """Rewrites a saved result with changed metadata/arrays.

    With ``rechecksum`` the checksum is recomputed (a writer that made an
    inconsistent file), else the old one stays (damage after the save).
    """
    from jax_infodiscard.core.results import checksum

    with np.load(path) as f:
        meta = json.loads(str(f["__meta__"]))
        arrays = {k: f[k] for k in f.files if k != "__meta__"}
    for k, v in (meta_changes or {}).items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    for k, v in array_changes.items():
        if v is None:
            arrays.pop(k)
        else:
            arrays[k] = v
    if rechecksum and "checksum" in meta:
        meta["checksum"] = checksum(arrays)
    np.savez(path, __meta__=np.array(json.dumps(meta)), **arrays)


def test_result_file_round_trip_carries_version_and_checksum(tmp_path):
    from jax_infodiscard.core.results import FORMAT, CIDResult, checksum

    res = _result()
    res.save(tmp_path / "r.npz")
    with np.load(tmp_path / "r.npz") as f:
        meta = json.loads(str(f["__meta__"]))
        arrays = {k: f[k] for k in f.files if k != "__meta__"}
    assert meta["format"] == FORMAT == 4 and meta["checksum"] == checksum(arrays)
    back = CIDResult.load(tmp_path / "r.npz")
    for k in arrays:
        np.testing.assert_array_equal(getattr(back, k), getattr(res, k))
    assert (back.layers, back.units, back.method) == (("a", "b"), 3, "linear")
    _result(per_channel=True).save(tmp_path / "c.npz")
    assert CIDResult.load(tmp_path / "c.npz").pixel.shape == (2, 3, 4, 5, 2)


@pytest.mark.parametrize(
    "meta, arrays, match",
    [
        ({"format": 99}, {"extra": np.ones(2)}, r"format 99, newer than format 4"),
        ({"format": None}, {}, r"has no format version"),
        ({"format": 1}, {}, r"format 1 .*reads formats 2-4"),
        (
            {},
            {"sigma": np.ones((2, 3, 4, 5, 2))},
            r"'sigma' has shape \(2, 3, 4, 5, 2\)",
        ),
        ({}, {"lam": np.ones((2, 3, 4))}, r"'lam' has shape \(2, 3, 4\)"),
        ({}, {"linearity": None}, r"lacks the field\(s\) \['linearity'\]"),
        ({}, {"extra": np.ones((2, 3))}, r"unknown field\(s\) \['extra'\]"),
        ({"metric": "ru"}, {}, r"holds a 'ru' result, not 'cid'"),
    ],
)
def test_result_load_refuses_wrong_versions_fields_and_shapes(
    tmp_path, meta, arrays, match
):
    from jax_infodiscard.core.results import CIDResult, ResultFileError

    path = tmp_path / "r.npz"
    _result().save(path)
    _rewrite(path, meta, **arrays)
    with pytest.raises(ResultFileError, match=r"r\.npz.*" + match):
        CIDResult.load(path)


def test_result_load_checks_checksum_and_summaries(tmp_path):
    from jax_infodiscard.core.results import CIDResult, ResultFileError

    res, path = _result(), tmp_path / "r.npz"
    res.save(path)
    changed = np.asarray(res.pixel).copy()
    changed[1, 2, 0, 0] += 1.0
    _rewrite(path, rechecksum=False, pixel=changed)
    with pytest.raises(ResultFileError, match=r"r\.npz: the arrays do not match"):
        CIDResult.load(path)
    # A format-2 file has no checksum (nor error bars); its summaries are
    # still checked.
    bars = dict.fromkeys(("mean_se", "pixel_se", "reproducibility", "floor_share"))
    _rewrite(path, {"format": 2, "checksum": None}, rechecksum=False, **bars)
    with pytest.raises(ResultFileError, match=r"mean\[1, 2\] = .* pixel maps give"):
        CIDResult.load(path)
    res.save(path)
    _rewrite(path, {"format": 2, "checksum": None}, **bars)
    back = CIDResult.load(path)
    np.testing.assert_array_equal(back.pixel, res.pixel)
    assert np.isnan(back.pixel_se).all() and back.pixel_se.shape == res.pixel.shape


def test_result_file_failures_are_one_error_naming_the_file(tmp_path):
    from jax_infodiscard.core.results import CIDResult, ResultFileError

    path = tmp_path / "r.npz"
    _result().save(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # one corrupted byte inside the compressed data
    (tmp_path / "bad.npz").write_bytes(bytes(data))
    np.save(tmp_path / "arr.npy", np.ones(3))
    np.savez(tmp_path / "other.npz", x=np.ones(3))
    (tmp_path / "folder.npz").mkdir()
    for name, match in (
        ("bad.npz", "bad.npz is truncated or corrupt|bad.npz: the arrays do not match"),
        ("arr.npy", r"arr\.npy is a single \.npy array"),
        ("other.npz", r"other\.npz is an \.npz archive but not a saved result"),
        ("folder.npz", r"folder\.npz is a folder"),
    ):
        with pytest.raises(ResultFileError, match=match):
            CIDResult.load(tmp_path / name)
    with pytest.raises(IsADirectoryError, match=r"folder\.npz: it is a folder") as e:
        _result().save(tmp_path / "folder.npz")
    assert ".tmp" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _result().save(tmp_path / "no" / "r.npz")
    assert sorted(_strays(tmp_path)) == []
