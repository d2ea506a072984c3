"""``analyze layerwise``: CID and concentration layer by layer in one network.

The smallest analysis, and the template of the others: it trains (or loads
from the cache) the zoo ConvNet, computes pixel-wise CID of its default
layers on test images, draws the layer-wise curves and tests the paper's
statement that, for a fixed ``beta``, CID rises steadily from block to block
(Sec. 4, about Fig. 3b): every step between consecutive layers must raise
the mean CID by more than two standard errors of the per-image differences.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import jax_infodiscard as jid
from jax_infodiscard.experiments.analyses import (
    Analysis,
    AnalysisOptions,
    AnalysisResult,
    Verdict,
    paired_outcome,
    register,
)
from jax_infodiscard.experiments.cache import ModelSpec, train_or_load
from jax_infodiscard.experiments.data import dataset_has_masks
from jax_infodiscard.experiments.rundir import RunFolder
from jax_infodiscard.models import feature_fn
from jax_infodiscard.plotting import plot_layer_curves
from jax_infodiscard.training.train import TrainConfig

# (training images, epochs, analysed images) per scale.
SIZES = {"toy": (256, 1, 4), "fast": (3_000, 4, 16), "full": (10_000, 8, 64)}


def _concentration(options: AnalysisOptions, test, res, num_images: int):
    """Concentration ``(L, B')`` of the ``B'`` images whose mask has both
    foreground and background, or None (no masks in the data set, or no
    such image)."""
    if not dataset_has_masks(options.dataset):
        return None
    masks = np.asarray(test.masks[:num_images])
    ok = masks.any(axis=(1, 2)) & (~masks).any(axis=(1, 2))
    if not ok.any():
        return None
    return np.asarray(jid.concentration(res.pixel[:, ok], masks[ok]))


def _steps_verdict(layers, res) -> tuple[list, Verdict]:
    """The paired CID step from each layer to the next (nats), as
    ``(from, to, outcome, mean, sem)``, and the claim's verdict."""
    steps = []
    for i in range(len(layers) - 1):
        outcome, mean, sem = paired_outcome(
            res.mean[i + 1] - res.mean[i], expect="positive"
        )
        steps.append((layers[i], layers[i + 1], outcome, mean, sem))
    outcomes = {s[2] for s in steps}
    if outcomes == {"held"}:
        overall = "held"
    elif "did not hold" in outcomes:
        overall = "did not hold"
    else:
        overall = "inconclusive"
    measured = "; ".join(f"{a}->{b}: {m:+.3f} ± {s:.3f}" for a, b, _, m, s in steps)
    verdict = Verdict(
        claim="CID rises from each block to the next within one network",
        figure="Sec. 4, Fig. 3b",
        measured=f"mean CID step (nats) {measured}",
        outcome=overall,
        rule="every step's mean paired difference > 2 standard errors over "
        "images (one network of one training seed: not replicated over seeds, "
        "unlike the other analyses)",
    )
    return steps, verdict


def _per_layer(layers, res, conc) -> dict:
    """Per layer: CID mean and SD over images (nats), the share of converged
    solves, and the mean concentration and linearity where measured."""
    linearity = getattr(res, "linearity", None)
    return {
        name: {
            "cid_mean": float(res.mean[i].mean()),
            "cid_sd": float(res.mean[i].std()),
            "converged": float(np.mean(res.converged[i])),
            **(
                {"concentration_mean": float(np.nanmean(conc[i]))}
                if conc is not None
                else {}
            ),
            **(
                {"linearity_mean": float(np.mean(linearity[i]))}
                if linearity is not None
                else {}
            ),
        }
        for i, name in enumerate(layers)
    }


def run(folder: RunFolder, options: AnalysisOptions) -> AnalysisResult:
    """Trains or loads the model, computes CID per layer, states the verdict."""
    num_train, epochs, num_images = SIZES[options.scale]
    tfds_crop = None if options.dataset in ("synthetic", "cifar10") else 1.5
    spec = ModelSpec(
        model="convnet",
        dataset=options.dataset,
        image_size=options.image_size,
        num_train=num_train,
        num_test=max(num_images, 64),
        crop_scale=tfds_crop,
        train=TrainConfig(epochs=epochs, seed=options.seed),
    )
    trained = train_or_load(spec, options.cache_dir, progress=options.progress)
    model, test = trained.model, trained.test_data
    layers = tuple(model.default_layers)
    images = jnp.asarray(test.images[:num_images])
    res = jid.cid(
        feature_fn(model, layers),
        images,
        jax.random.key(options.seed),
        config=options.cid,
    ).to_numpy()
    folder.save_result("cid.npz", res)
    curves = {"CID mean": res.mean}
    conc = _concentration(options, test, res, images.shape[0])
    if conc is not None:
        curves["CID concentration"] = conc
    plot_layer_curves(
        layers,
        curves,
        folder.record("layer_curves.png"),
        title=f"convnet on {options.dataset}: CID per layer",
    )
    steps, verdict = _steps_verdict(layers, res)
    results = {
        "model": "convnet",
        "dataset": options.dataset,
        "test_accuracy": trained.accuracy,
        "num_images": int(images.shape[0]),
        "beta": res.beta,
        "solver": dataclasses.asdict(options.cid),
        "layers": _per_layer(layers, res, conc),
        "steps": [
            {"from": a, "to": b, "outcome": o, "mean": m, "sem": s}
            for a, b, o, m, s in steps
        ],
    }
    notes = (
        f"convnet trained {epochs} epochs on {num_train} {options.dataset} images "
        f"(test accuracy {trained.accuracy:.3f}); CID of {images.shape[0]} test "
        f"images, beta = {res.beta:g}. ![curves](layer_curves.png)"
    )
    return AnalysisResult(results=results, verdicts=(verdict,), notes=notes)


register(
    Analysis(
        name="layerwise",
        summary="CID and concentration layer by layer in one ConvNet",
        paper="Sec. 4 (Fig. 3b: CID rises with the number of blocks)",
        run=run,
    )
)
