"""The ``evaluate`` job end to end, at toy size (files, tables, invariants)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_rescaling_invariances

import jax_infodiscard as jid
from jax_infodiscard.experiments.evaluate import (
    DESCRIPTIVE_METHODS,
    LOCALIZATION_METHODS,
    EvaluateConfig,
    load_data,
    run_evaluate,
)
from jax_infodiscard.experiments.rundir import read_manifest

# The job's plumbing, not the solver's accuracy (tests/core/test_cid.py).
TINY_CID = jid.CIDConfig(
    probes=16, steps=4, samples=2, budget_samples=8, layer_strategy="vmap"
)


# Slow: the fairness check and the metrics have fast tests of their own
# (tests/evaluation/test_evaluation.py); this runs the job's plumbing end to end.
@pytest.mark.slow
def test_evaluate_job_writes_tables_and_fairness_holds(tmp_path):
    cfg = EvaluateConfig(
        num_train=256,
        num_test=64,
        num_images=4,
        epochs=1,
        ig_steps=4,
        lime_samples=16,
        fairness_images=2,
        # RU's invariance: tests/evaluation/test_evaluation.py (decoders cost compiles).
        fairness_decoder_steps=0,
        cid=TINY_CID,
    )
    out = tmp_path / "out"
    res = run_evaluate(out, cfg, cache_dir=tmp_path / "cache", progress=False)
    for name in (
        "results.md",
        "results.json",
        "descriptive_accuracy.png",
        "layer_fairness.png",
        "localization.csv",
        "localization.json",
    ):
        assert (out / name).stat().st_size > 0, name
    assert read_manifest(out)["status"] == "complete"
    assert json.loads((out / "results.json").read_text())["num_images"] == 4
    assert set(res["descriptive_accuracy"]) == set(DESCRIPTIVE_METHODS)
    assert set(res["localization"]) == set(LOCALIZATION_METHODS)
    for row in res["descriptive_accuracy"].values():
        assert 0.0 <= row["area"] <= 1.0
        assert row["fractions"][0] == 0.0
    for row in res["localization"].values():
        assert 0.0 <= row["recall_mean"] <= 1.0

    # w/4 on conv1, 4w on the next convolution: the network is unchanged;
    # CID does not move, the gradient maps scale.
    fair = res["layer_fairness"]
    assert all("ru_mean" not in q for q in fair["quantities"].values())
    assert_rescaling_invariances(fair, output_tol=1e-3)

    report = (out / "results.md").read_text()
    assert "| cid |" in report and "Layer fairness" in report


def test_evaluate_data_from_a_tfds_data_set():
    # Offline: tfds' mock data stands in for Oxford-IIIT Pet (37 classes).
    tfds = pytest.importorskip("tensorflow_datasets")
    cfg = EvaluateConfig(dataset="oxford_iiit_pet", num_train=32, num_test=8)
    with tfds.testing.mock_data(num_examples=32):
        data = load_data(cfg, "test", 4)
    assert data.images.shape == (4, 32, 32, 3) and data.masks.shape == (4, 32, 32)
    b = data.boxes
    assert b.shape == (4, 4)
    assert ((0 <= b[:, :2]) & (b[:, :2] < b[:, 2:]) & (b[:, 2:] <= 32)).all()


@pytest.mark.slow
def test_evaluate_job_on_a_tfds_data_set(tmp_path):
    # Offline: tfds' mock data stands in for Oxford-IIIT Pet (37 classes).
    tfds = pytest.importorskip("tensorflow_datasets")
    cfg = EvaluateConfig(
        dataset="oxford_iiit_pet",
        num_train=32,
        num_test=8,
        num_images=4,
        epochs=1,
        ig_steps=2,
        lime_samples=8,
        fairness_images=2,
        fairness_decoder_steps=0,
        cid=TINY_CID,
    )
    with tfds.testing.mock_data(num_examples=32):
        data = load_data(cfg, "test", 4)
        res = run_evaluate(
            tmp_path / "out", cfg, cache_dir=tmp_path / "cache", progress=False
        )
    assert data.images.shape == (4, 32, 32, 3) and data.masks.shape == (4, 32, 32)
    assert res["dataset"] == "oxford_iiit_pet" and res["num_images"] == 4
    boxes = data.boxes
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / 32**2
    np.testing.assert_allclose(res["box_fraction"], area.mean(), rtol=1e-6)
    assert "ru_mean" not in res["layer_fairness"]["quantities"]["conv1"]
    assert "oxford_iiit_pet" in (tmp_path / "out" / "results.md").read_text()


def test_evaluate_rejects_data_without_boxes():
    with pytest.raises(ValueError, match="annotated tfds data set"):
        load_data(EvaluateConfig(dataset="cifar10"), "test", 4)
