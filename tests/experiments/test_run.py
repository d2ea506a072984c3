"""The ``run`` job: streamed stores, resume after kill -9, several processes."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorstore as ts
from flax import nnx

import jax_infodiscard as jid
from jax_infodiscard.data import SyntheticConfig, load_synthetic
from jax_infodiscard.experiments.run import DatasetRunConfig, run_dataset
from jax_infodiscard.experiments.rundir import RunFolderError, read_manifest
from jax_infodiscard.models import create_model, feature_fn, model_metadata
from jax_infodiscard.training.checkpoint import save_checkpoint

SIZE, LAYERS = 16, ("conv1",)
NUM, SHARD = 12, 2


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny untrained ConvNet checkpoint (CID does not need accuracy)."""
    model = create_model(
        "convnet", num_classes=10, image_size=SIZE, rngs=nnx.Rngs(0), width=4
    )
    path = tmp_path_factory.mktemp("ckpt") / "convnet"
    save_checkpoint(path, model, metadata=model_metadata(model), step=1)
    return str(path.resolve())


def _config(checkpoint, **changes) -> DatasetRunConfig:
    base = dict(
        num_images=NUM,
        layers=LAYERS,
        image_size=SIZE,
        shard_size=SHARD,
        checkpoint=checkpoint,
    )
    return DatasetRunConfig(**(base | changes))


def _argv(checkpoint, out) -> list[str]:
    return [
        "run",
        "--checkpoint",
        checkpoint,
        "--image-size",
        str(SIZE),
        "--num-images",
        str(NUM),
        "--shard-size",
        str(SHARD),
        "--layers",
        *LAYERS,
        "--out",
        str(out),
        "--no-progress",
    ]


def _env(tmp_path_factory, **extra) -> dict:
    cache = tmp_path_factory.getbasetemp() / "jax-compilation-cache"
    return os.environ | {
        "PYTHONPATH": os.pathsep.join(sys.path),
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        **extra,
    }


def _open(path):
    """A store array opened with tensorstore alone (no jax_infodiscard)."""
    spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": str(path)}}
    return np.asarray(ts.open(spec, open=True).result().read().result())


def _arrays(out) -> dict[str, np.ndarray]:
    store = out / "cid.zarr"
    return {p.name: _open(p) for p in sorted(store.iterdir()) if p.is_dir()}


def _markers(out) -> dict[str, float]:
    d = out / "shards"
    return (
        {p.name: p.stat().st_mtime_ns for p in d.glob("*.json")} if d.is_dir() else {}
    )


@pytest.fixture(scope="module")
def reference(checkpoint, tmp_path_factory):
    """One uninterrupted single-process run (in this process)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    summary = run_dataset(out, _config(checkpoint), progress=False)
    return out, summary


def test_the_store_holds_exactly_what_cid_computes(reference, checkpoint):
    out, summary = reference
    arrays = _arrays(out)
    assert {"pixel", "mean", "converged", "budget", "concentration", "label"} <= set(
        arrays
    )
    assert arrays["pixel"].shape == (len(LAYERS), NUM, SIZE, SIZE)
    assert arrays["mean"].shape == arrays["concentration"].shape == (len(LAYERS), NUM)
    data = load_synthetic("test", NUM, config=SyntheticConfig(image_size=SIZE))
    np.testing.assert_array_equal(arrays["label"], data.labels)

    # The same numbers as calling jid.cid shard by shard with keys folded
    # from the global image index (the last shard is padded the same way).
    from jax_infodiscard.training.checkpoint import restore_checkpoint

    model, _ = restore_checkpoint(checkpoint)
    fn = feature_fn(model, LAYERS)
    base = jax.random.key(0)
    for start in range(0, NUM, SHARD):
        idx = jnp.arange(start, start + SHARD, dtype=jnp.uint32)
        keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(idx)
        res = jid.cid(fn, data.images[start : start + SHARD], keys, layers=LAYERS)
        np.testing.assert_array_equal(
            arrays["pixel"][:, start : start + SHARD], np.asarray(res.pixel)
        )
        conc = jid.concentration(res.pixel, data.masks[start : start + SHARD])
        np.testing.assert_allclose(
            arrays["concentration"][:, start : start + SHARD], conc, rtol=1e-6
        )

    attrs = json.loads((out / "cid.zarr" / ".zattrs").read_text())
    assert attrs["layers"] == list(LAYERS) and attrs["num_images"] == NUM
    dims = json.loads((out / "cid.zarr" / "pixel" / ".zattrs").read_text())
    assert dims["_ARRAY_DIMENSIONS"] == ["layer", "image", "y", "x"]
    assert json.loads((out / "cid.zarr" / ".zgroup").read_text()) == {"zarr_format": 2}

    manifest = read_manifest(out)
    assert manifest["status"] == "complete"
    assert manifest["shards"]["total"] == NUM // SHARD
    assert manifest["shards"]["by_process"]["0"]["images"] == NUM
    for i, name in enumerate(LAYERS):
        row = summary["layers"]["cid"][name]
        np.testing.assert_allclose(row["mean"], arrays["mean"][i].mean(), rtol=1e-6)
        np.testing.assert_allclose(
            row["concentration"], arrays["concentration"][i].mean(), rtol=1e-5
        )
        assert 0.0 <= row["converged"] <= 1.0
    assert json.loads((out / "results.json").read_text())["num_images"] == NUM
    assert "| conv1 |" in (out / "report.md").read_text()


def test_rerun_is_refused_resume_of_a_complete_run_recomputes_nothing(
    reference, checkpoint
):
    out, summary = reference
    with pytest.raises(RunFolderError, match="--overwrite"):
        run_dataset(out, _config(checkpoint), progress=False)
    with pytest.raises(RunFolderError, match="other settings"):
        run_dataset(out, _config(checkpoint, seed=1), resume=True, progress=False)
    before = _markers(out)
    again = run_dataset(out, _config(checkpoint), resume=True, progress=False)
    assert again["computed_now"] == 0
    assert again["layers"] == summary["layers"]
    assert _markers(out) == before


def test_resume_after_kill_9_equals_an_uninterrupted_run(
    reference, checkpoint, tmp_path, tmp_path_factory
):
    out = tmp_path / "killed"
    env = _env(tmp_path_factory, JAX_INFODISCARD_TEST_PAUSE_S="0.5")
    child = subprocess.Popen(
        [sys.executable, "-m", "jax_infodiscard.cli", *_argv(checkpoint, out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while len(_markers(out)) < 2 and child.poll() is None:
            assert time.monotonic() < deadline, "the child never finished a shard"
            time.sleep(0.02)
        time.sleep(0.25)  # inside a shard's pause: its chunks are written
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()
    killed = _markers(out)
    assert 2 <= len(killed) < NUM // SHARD
    assert read_manifest(out)["status"] == "running"

    summary = run_dataset(out, _config(checkpoint), resume=True, progress=False)
    # Nothing finished was recomputed, nothing was lost.
    assert summary["computed_now"] == NUM - SHARD * len(killed)
    after = _markers(out)
    assert {k: after[k] for k in killed} == killed
    assert len(after) == NUM // SHARD
    ref_arrays, arrays = _arrays(reference[0]), _arrays(out)
    assert ref_arrays.keys() == arrays.keys()
    for name, ref in ref_arrays.items():
        np.testing.assert_array_equal(arrays[name], ref, err_msg=name)
    assert read_manifest(out)["status"] == "complete"
    assert read_manifest(out)["resumed"]


def test_bad_layer_names_fail_before_the_run_folder_exists(
    checkpoint, tmp_path, capsys
):
    from jax_infodiscard.cli import main

    out = tmp_path / "never"
    argv = _argv(checkpoint, out)
    argv[argv.index("--layers") + 1] = "conv9"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "conv9" in err and "conv1" in err  # names the available layers
    assert not out.exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one(reference, checkpoint, tmp_path, tmp_path_factory):
    out = tmp_path / "two"
    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jax_infodiscard.cli",
                *_argv(checkpoint, out),
                "--coordinator",
                f"localhost:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
            ],
            env=_env(tmp_path_factory),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, stderr) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, stderr[-3000:]
    # Process 0 prints the merged summary; process 1 only computes.
    assert "| conv1 |" in outputs[0][0] and "| conv1 |" not in outputs[1][0]
    manifest = read_manifest(out)
    assert manifest["status"] == "complete" and manifest["processes"] == 2
    by_process = manifest["shards"]["by_process"]
    assert set(by_process) == {"0", "1"}
    assert by_process["0"]["images"] + by_process["1"]["images"] == NUM
    ref_arrays, arrays = _arrays(reference[0]), _arrays(out)
    assert ref_arrays.keys() == arrays.keys()
    for name, ref in ref_arrays.items():
        np.testing.assert_array_equal(arrays[name], ref, err_msg=name)
    assert manifest["summary"] == read_manifest(reference[0])["summary"]


@pytest.mark.slow
def test_ru_is_streamed_when_decoders_are_given(checkpoint, tmp_path):
    from jax_infodiscard.experiments.cache import load_or_train_decoder
    from jax_infodiscard.training.checkpoint import restore_checkpoint
    from jax_infodiscard.training.decoder import DecoderConfig

    model, _ = restore_checkpoint(checkpoint)
    train = load_synthetic("train", 32, config=SyntheticConfig(image_size=SIZE))
    decoders = tmp_path / "decoders"
    load_or_train_decoder(
        feature_fn(model, LAYERS),
        LAYERS[0],
        train.images,
        DecoderConfig(steps=2, width=4, num_blocks=1, batch_size=8),
        key=jax.random.key(1),
        checkpoint_dir=decoders,
        progress=False,
    )
    out = tmp_path / "ru"
    cfg = _config(checkpoint, num_images=4, decoders=str(decoders))
    assert cfg.ru.beta == cfg.cid.beta
    summary = run_dataset(out, cfg, progress=False)
    ru = {p.name: _open(p) for p in (out / "ru.zarr").iterdir() if p.is_dir()}
    assert ru["pixel"].shape == (1, 4, SIZE, SIZE) and np.isfinite(ru["pixel"]).all()
    assert ru["concentration"].shape == (1, 4)
    assert set(summary["layers"]) == {"cid", "ru"}
    np.testing.assert_allclose(
        summary["layers"]["ru"]["conv1"]["mean"], ru["mean"].mean(), rtol=1e-6
    )
    assert json.loads((out / "ru.zarr" / ".zattrs").read_text())["metric"] == "ru"


# --------------------------- issue 23: resume verifies data, failures, full disk


def _copy(reference, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(reference[0], out)
    return out


def test_resume_recomputes_damaged_shards_and_says_so(reference, checkpoint, tmp_path):
    out = _copy(reference, tmp_path)
    marker = json.loads((out / "shards" / "000001.json").read_text())
    assert set(marker["checksums"]["cid"]) >= {"pixel", "mean", "label"}
    assert marker["failures"] == []
    # Shard 1 loses a pixel chunk (it would read as NaN); shard 4's mean chunk
    # gets one changed byte.
    (out / "cid.zarr" / "pixel" / "0.1.0.0").unlink()
    chunk = out / "cid.zarr" / "mean" / "0.4"
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 0x01
    chunk.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning) as rec:
        summary = run_dataset(out, _config(checkpoint), resume=True, progress=False)
    messages = sorted(str(w.message) for w in rec)
    assert len(messages) == 2
    assert re.search(r"shard 1 .*damaged: cid.zarr/pixel .*recomputing", messages[0])
    assert re.search(r"shard 4 .*damaged: cid.zarr/mean .*checksum", messages[1])
    assert summary["recomputed_damaged_shards"] == [1, 4]
    assert summary["computed_now"] == 2 * SHARD
    ref = _arrays(reference[0])
    for name, arr in _arrays(out).items():
        np.testing.assert_array_equal(arr, ref[name], err_msg=name)
    assert read_manifest(out)["status"] == "complete"


def test_an_unfinished_folder_suggests_resume_first(reference, checkpoint, tmp_path):
    out = _copy(reference, tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps(manifest | {"status": "running"}))
    with pytest.raises(RunFolderError, match=r"unfinished.*pass --resume to continue"):
        run_dataset(out, _config(checkpoint), progress=False)


def test_a_full_disk_names_the_path_and_how_to_resume(
    reference, checkpoint, tmp_path, monkeypatch
):
    import errno

    from jax_infodiscard.experiments import run as run_module
    from jax_infodiscard.experiments.store import disk_full, is_disk_full

    out = _copy(reference, tmp_path)
    (out / "shards" / "000003.json").unlink()

    write_json = run_module.io.write_json

    def full(path, obj, **kwargs):
        if "shards" in str(path):  # the disk fills up while shard 3 is written
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write_json(path, obj, **kwargs)

    monkeypatch.setattr(run_module.io, "write_json", full)
    with pytest.raises(OSError, match=r"no space left on device .*000003.*--resume"):
        run_dataset(out, _config(checkpoint), resume=True, progress=False)
    assert read_manifest(out)["status"] == "failed"
    monkeypatch.undo()
    summary = run_dataset(out, _config(checkpoint), resume=True, progress=False)
    assert summary["computed_now"] == SHARD
    # tensorstore reports it as a ValueError with RESOURCE_EXHAUSTED inside
    assert is_disk_full(ValueError("RESOURCE_EXHAUSTED: ... error writing x"))
    assert not is_disk_full(ValueError("shape mismatch"))
    err = disk_full(tmp_path / "a.zarr" / "pixel")
    assert err.errno == errno.ENOSPC and "a.zarr/pixel" in str(err)


def test_the_summary_comes_from_the_maps_and_counts_failed_images(tmp_path):
    from jax_infodiscard.experiments.run import _summary
    from jax_infodiscard.experiments.store import ArrayStore

    store = ArrayStore(tmp_path / "cid.zarr")
    store.write_attrs({"num_images": 4})
    pixel = np.arange(32, dtype=np.float32).reshape(1, 4, 2, 4)
    pixel[0, 2] = np.nan  # a failed image
    mean = pixel.mean(axis=(2, 3))  # NaN for the failed image
    for name, arr in (("pixel", pixel), ("mean", mean)):
        a = store.array(name, arr.shape, arr.dtype, arr.shape, ["layer", "image"])
        store.write(a, name, (), arr)
    row = _summary({"cid": store}, ["conv1"], block=3)["cid"]["conv1"]
    assert row["failed"] == 1
    assert row["mean"] == pytest.approx(np.mean(pixel[0, [0, 1, 3]]))
    mean[0, 3] += 1.0  # the stored summary no longer matches the maps
    store.write(
        store.array("mean", mean.shape, mean.dtype, mean.shape, []), "mean", (), mean
    )
    with pytest.raises(RuntimeError, match=r"mean\[0, 3\] = .* pixel maps give"):
        _summary({"cid": store}, ["conv1"])


def test_a_failing_image_becomes_a_failure_record_not_a_nan_map():
    from functools import partial

    from jax_infodiscard.experiments.run import _failed_fields, _result_fields, _solve

    fn = lambda x: {"sqrt": jnp.sqrt(x)}
    rng = np.random.default_rng(0)
    batch = jnp.asarray(rng.uniform(0.1, 1.0, size=(3, 4, 3, 1)), jnp.float32)
    keys = jax.random.split(jax.random.key(0), 3)
    cfg = jid.CIDConfig(method="linear", probes=8, budget_samples=4)
    solve = partial(jid.cid, fn, key=keys, config=cfg)
    clean = solve(batch)
    res, failed, records = _solve(solve, batch.at[1, 0, 0, 0].set(0.0), 3, 100)
    assert failed == [1]
    assert [(r["image"], r["layer"]) for r in records] == [(101, "sqrt")]
    assert "Jacobian is infinite" in records[0]["cause"]
    fields = _result_fields(res.to_numpy())
    _failed_fields(fields, failed)
    assert np.isnan(fields["pixel"][:, 1]).all() and not fields["converged"][:, 1].any()
    for b in (0, 2):  # the other images: the numbers of the clean batch
        np.testing.assert_array_equal(
            fields["pixel"][:, b], np.asarray(clean.pixel)[:, b]
        )
