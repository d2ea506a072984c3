"""The main job end to end (tiny settings) and the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest

import jax_infodiscard as jid
from jax_infodiscard.cli import main
from jax_infodiscard.experiments.demo import DemoConfig, run_demo
from jax_infodiscard.experiments.rundir import RunFolderError, read_manifest


def test_demo_writes_figures_and_summary(tmp_path):
    cfg = DemoConfig(
        num_train=256,
        num_test=64,
        num_images=2,
        epochs=1,
        decoder_steps=10,
        ru_steps=4,
        # The job's plumbing, not the solver's accuracy (tests/test_cid.py).
        cid=jid.CIDConfig(
            layer_strategy="vmap", probes=16, steps=4, samples=2, budget_samples=8
        ),
    )
    out, cache = tmp_path / "out", tmp_path / "cache"
    summary = run_demo(out, cfg, cache_dir=cache, progress=False)
    outputs = (
        "pixel_maps.png",
        "layer_curves.png",
        "summary.json",
        "cid.npz",
        "ru.npz",
    )
    for name in outputs:
        assert (out / name).stat().st_size > 0, name
    manifest = read_manifest(out)
    assert manifest["status"] == "complete" and manifest["command"] == "demo"
    assert sorted(manifest["files"]) == sorted(outputs)
    assert manifest["config"]["num_images"] == 2
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["layers"].keys() == summary["layers"].keys()
    cid = jid.CIDResult.load(out / "cid.npz")
    assert cid.pixel.shape[1:] == (2, 32, 32)
    assert np.isfinite(cid.pixel).all()
    for row in on_disk["layers"].values():
        assert np.isfinite(row["cid_mean"]) and np.isfinite(row["ru_mean"])
    # The folder holds a complete run: refused without overwrite.
    with pytest.raises(RunFolderError, match="--overwrite"):
        run_demo(out, cfg, cache_dir=cache, progress=False)
    # A second run reuses the cached model and decoders.
    again = run_demo(out, cfg, cache_dir=cache, progress=False, overwrite=True)
    assert again["test_accuracy"] == summary["test_accuracy"]
    assert again["timings_s"]["train_s"] < summary["timings_s"]["train_s"]


def test_cli_rejects_unknown_model(tmp_path, capsys):
    code = main(
        ["demo", "--out", str(tmp_path), "--model", "nope", "--fast", "--no-progress"]
    )
    assert code == 2
    assert "nope" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_demo_fast(tmp_path):
    out = tmp_path / "out"
    argv = ["demo", "--out", str(out), "--fast", "--no-progress"]
    assert main([*argv, "--cache", str(tmp_path / "cache")]) == 0
    assert (out / "pixel_maps.png").exists()
    assert read_manifest(out)["argv"][1:] == [*argv, "--cache", str(tmp_path / "cache")]
