"""The main job end to end (tiny settings) and the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest

import jax_infodiscard as jid
from jax_infodiscard.cli import main
from jax_infodiscard.experiments.demo import DemoConfig, run_demo


def test_demo_writes_figures_and_summary(tmp_path):
    cfg = DemoConfig(
        num_train=256,
        num_test=64,
        num_images=2,
        epochs=1,
        decoder_steps=10,
        cid=jid.CIDConfig(layer_strategy="vmap"),
    )
    summary = run_demo(tmp_path, cfg, progress=False)
    for name in (
        "pixel_maps.png",
        "layer_curves.png",
        "summary.json",
        "cid.npz",
        "ru.npz",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["layers"].keys() == summary["layers"].keys()
    cid = jid.CIDResult.load(tmp_path / "cid.npz")
    assert cid.pixel.shape[1:] == (2, 32, 32)
    assert np.isfinite(cid.pixel).all()
    for row in on_disk["layers"].values():
        assert np.isfinite(row["cid_mean"]) and np.isfinite(row["ru_mean"])
    # A second run reuses the cached model and decoders.
    again = run_demo(tmp_path, cfg, progress=False)
    assert again["test_accuracy"] == summary["test_accuracy"]


def test_cli_rejects_unknown_model(tmp_path, capsys):
    code = main(
        ["demo", "--out", str(tmp_path), "--model", "nope", "--fast", "--no-progress"]
    )
    assert code == 2
    assert "nope" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_demo_fast(tmp_path):
    assert main(["demo", "--out", str(tmp_path), "--fast", "--no-progress"]) == 0
    assert (tmp_path / "pixel_maps.png").exists()
