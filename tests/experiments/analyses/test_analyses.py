"""The paper's analyses end to end at toy size: outputs and verdict tables."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jax_infodiscard.experiments.analyses import (
    ANALYSES,
    OUTCOMES,
    AnalysisOptions,
    run_analysis,
)
from jax_infodiscard.experiments.rundir import read_manifest

NAMES = (
    "layerwise",
    "depth",
    "damage",
    "adversarial",
    "compression",
    "distillation",
    "epochs",
    "concentration",
)
HEADER = "| claim | paper | measured | verdict |"


def run_toy(name, tmp_path, figures=("curves.png", "differences.png"), **kwargs):
    """Runs ``name`` at toy size and checks what every analysis writes."""
    options = AnalysisOptions(
        scale="toy",
        image_size=16,
        cache_dir=tmp_path / "cache",
        progress=False,
        **kwargs,
    )
    out = tmp_path / name
    result = run_analysis(name, out, options)
    for file in ("results.json", "report.md", *figures):
        assert (out / file).stat().st_size > 0, file
    assert read_manifest(out)["status"] == "complete"
    assert result.verdicts
    res = json.loads((out / "results.json").read_text())
    assert res["analysis"] == name
    assert [v["outcome"] for v in res["verdicts"]] == [
        v.outcome for v in result.verdicts
    ]
    # The verdict table: a header, a rule, one well-formed row per claim.
    # Over seeds, a column beside the verdict says what the first seed
    # (as trained) alone said.
    report = (out / "report.md").read_text().splitlines()
    (start,) = [i for i, line in enumerate(report) if line.startswith(HEADER)]
    seeds = dict(options.design).get("seeds", ANALYSES[name].sizes["toy"].seeds)
    first = options.seed + seeds[0]
    assert report[start] == f"{HEADER} seed {first} alone said | rule |"
    assert report[start + 1] == "|---|---|---|---|---|---|"
    rows = report[start + 2 : start + 2 + len(result.verdicts)]
    for row, v in zip(rows, result.verdicts, strict=True):
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        assert len(cells) == 6, row
        assert cells[3] == f"**{v.outcome}**" and v.outcome in OUTCOMES
        assert cells[4] == v.alone and v.alone in OUTCOMES and v.first_seed == first
        assert cells[0] and cells[1] and cells[2] and cells[5]
    # The regime diagnostic is reported for every analysed layer.
    assert "| linearity |" in "\n".join(report)
    for net in res["networks"].values():
        for layer in net["layers"].values():
            assert 0.0 <= layer["linearity"] and "cid" in layer
    return result, res


def test_every_analysis_is_registered():
    assert set(NAMES) == set(ANALYSES)
    for name in NAMES:
        assert ANALYSES[name].paper and ANALYSES[name].summary


@pytest.mark.slow
def test_depth_end_to_end(tmp_path):
    result, res = run_toy("depth", tmp_path)
    assert set(res["networks"]) == {"resnet8", "resnet14"}
    claims = [v.claim for v in result.verdicts]
    assert any("deeper" in c for c in claims)


@pytest.mark.slow
def test_damage_end_to_end(tmp_path):
    result, res = run_toy("damage", tmp_path)
    # The revised layer has the requested four 7x7 filters, on its old input.
    assert res["kernels"]["damaged"] == [7, 7, res["kernels"]["original"][2], 4]
    assert res["revision"] == ["conv3", 4, 7]
    assert set(res["networks"]) == {"original", "damaged"}
    assert result.verdicts[0].claim.startswith("The revision boosts")
    assert "solver linearity" in result.verdicts[0].measured


@pytest.mark.slow
def test_adversarial_end_to_end(tmp_path):
    result, res = run_toy("adversarial", tmp_path)
    # The control: the normal net trained as many epochs again, clean.
    assert set(res["networks"]) == {"normal", "adversarial", "normal longer"}
    assert res["pgd"]["steps"] == 1
    for values in res["robustness_l2"].values():
        assert len(values) == 1 and values[0] > 0
    claims = [v.claim for v in result.verdicts]
    assert "CID" in claims[0] and "as many epochs" in claims[0]
    assert "adversarial − normal longer: seed 0" in result.verdicts[0].measured
    assert any(c.startswith("Control") for c in claims)
    assert "solver linearity" in result.verdicts[0].measured
    # One seed never decides; what it said alone is kept.
    assert {v.outcome for v in result.verdicts} == {"inconclusive"}


@pytest.mark.slow
def test_compression_end_to_end(tmp_path):
    result, res = run_toy("compression", tmp_path)
    (pruned,) = res["pruning"].values()
    # The fine-tuned net keeps the requested sparsity (exact up to one weight
    # in the count) and its accuracy within the stated tolerance.
    assert pruned["requested"] == 0.5
    assert abs(pruned["achieved"][0] - 0.5) < 1e-3
    assert pruned["accuracy_within_tolerance"] == [True]
    assert (
        pruned["test_accuracy"][0]
        >= pruned["original_accuracy"][0] - res["design"]["accuracy_tolerance"]
    )
    assert [v.claim.split()[0] for v in result.verdicts] == ["Compression"] * 2 + ["A"]
    assert all(r > 0 for rs in res["robustness_l2"].values() for r in rs)


@pytest.mark.slow
def test_distillation_end_to_end(tmp_path):
    result, res = run_toy("distillation", tmp_path)
    assert set(res["networks"]) == {"ordinary", "distilled from convnet-w4"}
    assert set(res["test_accuracy"]) == {
        "convnet-w4",
        "ordinary",
        "distilled from convnet-w4",
    }
    assert "distillation" in result.verdicts[0].claim


@pytest.mark.slow
def test_epochs_end_to_end(tmp_path):
    result, res = run_toy("epochs", tmp_path, figures=("curves.png", "course.png"))
    assert res["checkpoints"] == [1, 2, 3]
    assert set(res["networks"]) == {"epoch 1", "epoch 2", "epoch 3"}
    (verdict,) = result.verdicts
    assert "conv5" in verdict.claim
    # Test accuracy of every checkpoint, beside the CID course.
    (accuracy,) = res["test_accuracy"].values()
    assert len(accuracy) == 3 and all(0.0 <= a <= 1.0 for a in accuracy)
    assert res["networks"]["epoch 3"]["info"]["test_accuracy"] == accuracy[-1]
    assert "test accuracy per checkpoint" in verdict.measured


@pytest.mark.slow
def test_two_seeds_end_to_end(tmp_path):
    """Two seeds at toy size: labels are the seeds trained, the verdict counts
    them, and the first seed's own verdict stands beside it."""
    result, res = run_toy(
        "damage", tmp_path, seed=3, design={"seeds": [0, 1], "num_images": 4}
    )
    assert set(res["networks"]) == {
        f"{net} (seed {s})" for net in ("original", "damaged") for s in (3, 4)
    }
    cid = res["comparisons"]["cid"]["damaged"]
    assert [f["seed"] for f in cid["seeds"]] == [3, 4]
    assert all(f["n"] == 4 for f in cid["seeds"])
    means = [f["mean"] for f in cid["seeds"]]
    np.testing.assert_allclose(cid["mean"], np.mean(means))
    np.testing.assert_allclose(cid["between_sd"], np.std(means, ddof=1))
    errors = [np.hypot(f["sem"], f["mc"]) for f in cid["seeds"]]
    np.testing.assert_allclose(
        cid["se"], np.sqrt(max(np.var(means, ddof=1), np.mean(np.square(errors))) / 2)
    )
    verdict = result.verdicts[0]
    assert "seed 3: " in verdict.measured and "seed 4: " in verdict.measured
    assert "seed 0" not in verdict.measured and "over 2 seeds" in verdict.measured
    assert "between-seed SD" in verdict.measured and "agree in sign" in verdict.measured
    assert verdict.alone == cid["alone"] and verdict.first_seed == 3
    assert "seed 3 alone said" in (tmp_path / "damage" / "report.md").read_text()


def test_bottleneck_rule():
    from jax_infodiscard.experiments.analyses.epochs import bottleneck_outcome

    rng = np.random.default_rng(0)
    noise = rng.normal(scale=0.01, size=(3, 8))
    fall_rise = np.array([[1.0], [0.5], [0.9]]) + noise
    assert bottleneck_outcome(fall_rise)[0] == "held"
    assert bottleneck_outcome(np.array([[0.1], [0.5], [0.9]]) + noise)[0] == (
        "did not hold"
    )
    assert bottleneck_outcome(rng.normal(size=(3, 8)))[0] == "inconclusive"


@pytest.mark.slow
def test_concentration_end_to_end(tmp_path):
    result, res = run_toy("concentration", tmp_path)
    assert set(res["networks"]) == {"convnet-w4", "convnet-w8"}
    claims = [v.claim for v in result.verdicts]
    assert len(claims) == 4 and "Fig. 3a" in result.verdicts[-1].figure
    # Two nets: the rank correlation cannot decide.
    assert result.verdicts[-1].outcome == "inconclusive"


def _easy_data(n, seed):
    """Four classes told apart by their mean colour (a net learns it at once)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    colours = np.array([[0.8, 0.2, 0.2], [0.2, 0.8, 0.2], [0.2, 0.2, 0.8], [0.5] * 3])
    images = colours[labels][:, None, None, :] + rng.normal(0, 0.1, (n, 8, 8, 3))
    return np.clip(images, 0, 1).astype(np.float32), labels.astype(np.int32)


@pytest.mark.slow
def test_pruning_reaches_sparsity_and_fine_tuning_keeps_accuracy():
    """The compression recipe: prune 60%, fine-tune with the zeros held.

    Tolerance: the fine-tuned accuracy is within 0.05 of the original's.
    """
    from jax_infodiscard.experiments.analyses.compression import FINETUNE
    from jax_infodiscard.models.surgery import kernel_sparsity, mask_updates, prune
    from jax_infodiscard.training.train import TrainConfig, train

    data, test = _easy_data(512, 0), _easy_data(256, 1)
    cfg = TrainConfig(epochs=2, progress=False, augment=False)
    model, history = train(
        "convnet", data, test, cfg, num_classes=4, model_kwargs={"width": 8}
    )
    original = history["test_accuracy"][-1]
    assert original > 0.9  # the task was learned: the tolerance means something
    pruned, masks = prune(model, 0.6)
    tuned, history = train(
        pruned,
        data,
        test,
        TrainConfig(epochs=2, progress=False, augment=False, **FINETUNE),
        extra_transform=mask_updates(masks),
    )
    assert abs(kernel_sparsity(tuned)["global"] - 0.6) < 1e-3
    assert history["test_accuracy"][-1] >= original - 0.05


@pytest.mark.slow
def test_measure_with_ru_trains_decoders_per_depth_and_reuses_them(tmp_path):
    """The analyses' RU path (on only at full size): decoders are trained
    together per decoder depth, cached, and give RU for the conv layers
    (4 min under a load average of 5: two decoder and two RU compilations)."""
    import jax
    from flax import nnx

    from jax_infodiscard.data import load_synthetic
    from jax_infodiscard.experiments.analyses import measuring
    from jax_infodiscard.models import create_model

    model = create_model("convnet", rngs=nnx.Rngs(0))
    layers = ("conv1", "conv3", "logits")
    options = AnalysisOptions(scale="toy", image_size=32, progress=False)
    test = load_synthetic("test", 2)
    train = load_synthetic("train", 24).images

    def run():
        return measuring.measure(
            "net",
            model,
            layers,
            test.images,
            test.masks,
            options,
            key=jax.random.key(0),
            ru_images=train,
            decoder_dir=tmp_path / "dec",
        )

    out = run()
    # RU of the spatial layers only, in the order asked, where the (toy)
    # decoder learned something; finite, with MSEs for every spatial layer.
    from jax_infodiscard.training.decoder import LEARNED_NOTHING

    ratios = out.info["decoder_mse_over_variance"]
    assert set(out.info["decoder_mse"]) == set(ratios) == {"conv1", "conv3"}
    learned = tuple(n for n in ("conv1", "conv3") if ratios[n] < LEARNED_NOTHING)
    assert out.ru_layers == learned and learned  # conv1 learns even at toy size
    assert out.info["ru_not_solved"] == [n for n in ratios if n not in learned]
    assert out.ru.mean.shape == (len(learned), 2) and np.isfinite(out.ru.mean).all()
    saved = sorted(p.name for p in (tmp_path / "dec").iterdir())
    assert len(saved) == 2, saved
    again = run()  # cached decoders: the same RU
    np.testing.assert_allclose(again.ru.mean, out.ru.mean, rtol=1e-5)
    assert again.info["decoder_mse"] == out.info["decoder_mse"]
