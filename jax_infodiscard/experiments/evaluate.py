"""The ``evaluate`` job: CID against baseline explainers on the demo model.

Trains (or loads from the cache) a zoo model on the embedded synthetic data,
then writes to ``out``:

* ``descriptive_accuracy.png`` and ``results.json``: accuracy while the
  least important pixels are removed (paper Fig. 6) for CID, Gradient, GxI,
  Guided-BP, LRP, IG, LIME and a random map;
* ``localization.csv`` / ``localization.json``: recall of the top pixels
  inside the box (paper Table 2) for CID, CAM, Grad-CAM, LRP, Gradient and a
  random map;
* ``layer_fairness.png``: the ``w/4, 4w`` rescaling check (paper Sec. 3.4),
  with RU from decoders trained separately for the original and the rescaled
  model;
* ``results.md``: the tables of all three, as printed by the command.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import pathlib
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

import jax_infodiscard as jid
from jax_infodiscard import baselines
from jax_infodiscard.baselines.nnx_adapter import to_sequential
from jax_infodiscard.data import (
    TFDS_SPECS,
    load_dataset,
    load_synthetic,
    num_classes,
)
from jax_infodiscard.evaluation.fairness import layer_fairness
from jax_infodiscard.evaluation.metrics import (
    DEFAULT_FRACTIONS,
    descriptive_accuracy,
    importance,
    localization_recall,
)
from jax_infodiscard.models import feature_fn, model_fn, split_fn
from jax_infodiscard.training.decoder import DecoderConfig
from jax_infodiscard.training.train import TrainConfig, train

__all__ = [
    "EvalData",
    "EvaluateConfig",
    "fairness_table",
    "load_data",
    "markdown_table",
    "results_markdown",
    "run_evaluate",
    "train_model",
]

DESCRIPTIVE_METHODS = (
    "cid",
    "gradient",
    "gradient_x_input",
    "guided_backprop",
    "lrp_epsilon",
    "integrated_gradients",
    "lime",
    "random",
)
LOCALIZATION_METHODS = ("cid", "cam", "grad_cam", "lrp_epsilon", "gradient", "random")


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """Settings of the evaluation job.

    Attributes:
      model: zoo model name (a ConvBN chain: convnet, alexnet, vgg*).
      dataset: ``"synthetic"`` (embedded, default) or an annotated tfds data
        set (``"oxford_iiit_pet"``, ``"caltech_birds2011"``; needs the
        ``data`` extra and, the first time, a download), cropped to 1.5x the
        object box as in the paper.
      image_size: image height and width for tfds data sets (the synthetic
        set is 32x32).
      num_train: training images of the embedded data set.
      num_test: test images for the model's accuracy.
      num_images: test images explained and evaluated.
      epochs: training epochs.
      cid: CID configuration (the map is the last default layer's CID).
      ig_steps: integrated-gradients steps.
      lime_samples: LIME perturbations per image.
      fairness_layer: the rescaled layer of the fairness check.
      fairness_images: images of the fairness check.
      fairness_decoder_steps: training steps of each RU decoder of the
        fairness check (one per layer and model, width 16); 0 leaves RU out.
      seed: training seed and PRNG seed of the explainers.
    """

    model: str = "convnet"
    dataset: str = "synthetic"
    image_size: int = 32
    num_train: int = 10_000
    num_test: int = 1_000
    num_images: int = 64
    epochs: int = 8
    cid: jid.CIDConfig = dataclasses.field(default_factory=jid.CIDConfig)
    ig_steps: int = 300
    lime_samples: int = 5000
    fairness_layer: str = "conv1"
    fairness_images: int = 8
    fairness_decoder_steps: int = 150
    seed: int = 0

    @classmethod
    def fast(cls, **changes) -> EvaluateConfig:
        """A short configuration (3 min 28 s on a 2-core CPU, training included)."""
        base = cls(
            num_train=2_000,
            num_test=500,
            num_images=16,
            epochs=3,
            ig_steps=32,
            lime_samples=300,
            fairness_images=4,
            fairness_decoder_steps=40,
        )
        return dataclasses.replace(base, **changes)


def _explain_all(model, images, labels, key, cfg: EvaluateConfig, timings):
    """Raw maps ``(B, H, W)`` of every method, keyed by method name."""
    mfn = model_fn(model)
    last_conv = [
        s for s in model.stage_names if s.startswith("conv") and s in model.layer_names
    ][-1]
    pair = split_fn(model, last_conv)
    seq = to_sequential(model)
    target = jnp.asarray(labels, jnp.int32)
    options = {
        "gradient": (mfn, {}),
        "gradient_x_input": (mfn, {}),
        "guided_backprop": (mfn, {}),
        "lrp_epsilon": (seq, {}),
        "integrated_gradients": (mfn, {"steps": cfg.ig_steps}),
        "lime": (mfn, {"samples": cfg.lime_samples}),
        "cam": (pair, {}),
        "grad_cam": (pair, {}),
    }
    maps = {}
    for i, (name, (model_form, kw)) in enumerate(options.items()):
        t0 = time.perf_counter()
        out = baselines.explain(
            name, model_form, images, jax.random.fold_in(key, i), target=target, **kw
        )
        maps[name] = np.asarray(jax.block_until_ready(out.maps))
        timings[name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    layer = model.default_layers[-1]
    res = jid.cid(feature_fn(model, layer), images, key, config=cfg.cid)
    maps["cid"] = np.asarray(jax.block_until_ready(res.pixel[-1]))
    timings["cid"] = time.perf_counter() - t0
    maps["random"] = np.asarray(
        jax.random.uniform(jax.random.fold_in(key, 99), images.shape[:3])
    )
    return maps, layer


def _plot_curves(curves: dict, agreement: dict) -> Figure:
    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, data, label in (
        (axes[0], curves, "accuracy (true labels)"),
        (axes[1], agreement, "agreement with the unperturbed prediction"),
    ):
        for name, row in data.items():
            ax.plot(row["fractions"], row["accuracy"], marker="o", ms=3, label=name)
        ax.set_xlabel("fraction of least important pixels removed")
        ax.set_ylabel(label)
    axes[0].set_title("Descriptive accuracy (slower decrease = better)")
    axes[1].legend(fontsize=7)
    return fig


def markdown_table(results: dict) -> str:
    """Markdown table of descriptive-accuracy areas and localisation recall."""
    names = sorted(
        set(results["descriptive_accuracy"]) | set(results["localization"]),
        key=lambda n: (n == "random", n != "cid", n),
    )
    lines = [
        "| method | descriptive accuracy (area) | prediction agreement (area) "
        "| localisation recall |",
        "|---|---|---|---|",
    ]
    for n in names:
        da = results["descriptive_accuracy"].get(n)
        ag = results["prediction_agreement"].get(n)
        loc = results["localization"].get(n)
        a = f"{da['area']:.3f}" if da else "-"
        g = f"{ag['area']:.3f}" if ag else "-"
        r = f"{loc['recall_mean']:.3f} ± {loc['recall_sem']:.3f}" if loc else "-"
        lines.append(f"| {n} | {a} | {g} | {r} |")
    return "\n".join(lines)


def fairness_table(fair: dict) -> str:
    """Markdown table of the layer-fairness check (one row per quantity)."""
    layers = fair["layers"]
    head = " | ".join(f"{name}: original | rescaled | ratio" for name in layers)
    lines = [f"| quantity | {head} |", "|---" * (1 + 3 * len(layers)) + "|"]
    for q in fair["quantities"][layers[0]]:
        cells = []
        for name in layers:
            row = fair["quantities"][name][q]
            cells += [f"{row['original']:.4g}", f"{row['rescaled']:.4g}"]
            cells.append(f"{row['ratio']:.3f}")
        lines.append(f"| {q} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_markdown(results: dict) -> str:
    """The job's report: setting, both tables of the maps, the fairness table."""
    fair = results["layer_fairness"]
    c = fair["factor"]
    return "\n".join(
        [
            f"{results['model']} on {results.get('dataset', 'synthetic')}: test "
            f"accuracy {results['test_accuracy']:.3f}, "
            f"{results['num_images']} images, CID of {results['cid_layer']!r} "
            f"({results['cid_method']}), IG {results['config']['ig_steps']} steps, "
            f"LIME {results['config']['lime_samples']} samples; mean box fraction "
            f"{results['box_fraction']:.3f}.",
            "",
            markdown_table(results),
            "",
            f"Layer fairness: {fair['layers'][0]} scaled by 1/{c:g}, "
            f"{fair['layers'][1]} by {c:g} (largest logit change "
            f"{fair['max_output_change']:.2e}); ratio = rescaled / original.",
            "",
            fairness_table(fair),
        ]
    )


class EvalData(NamedTuple):
    """Images ``float32 (N, H, W, 3)`` in [0, 1], labels ``int32 (N,)``, masks
    ``bool (N, H, W)`` and boxes ``int32 (N, 4)`` ``(y0, x0, y1, x1)``."""

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray


def load_data(config: EvaluateConfig, split: str, n: int) -> EvalData:
    """``n`` examples (or the whole split, if smaller) of the job's data set.

    Raises:
      ValueError: unknown data set, or one without object boxes (CIFAR-10):
        localisation and concentration need them.
    """
    if config.dataset == "synthetic":
        d = load_synthetic(split, n)
        return EvalData(d.images, d.labels, d.masks, d.boxes)
    if config.dataset not in TFDS_SPECS or not TFDS_SPECS[config.dataset].annotated:
        annotated = [k for k, v in TFDS_SPECS.items() if v.annotated]
        raise ValueError(
            f"dataset must be 'synthetic' or an annotated tfds data set "
            f"{annotated} (localisation needs object boxes); got {config.dataset!r}"
        )
    batches = list(
        load_dataset(
            config.dataset,
            split,
            image_size=config.image_size,
            batch_size=256,
            num_examples=n,
            crop_scale=1.5,
        )
    )
    if not batches:
        raise ValueError(f"{config.dataset!r} split {split!r} has no examples")

    def cat(key):
        return np.concatenate([b[key] for b in batches])

    return EvalData(cat("image"), cat("label"), cat("mask"), cat("box"))


def train_model(
    config: EvaluateConfig, cache_dir: str | pathlib.Path, *, progress: bool = True
) -> tuple:
    """Trains ``config.model`` on the embedded data, or loads it from the cache.

    Returns:
      ``(model, test_accuracy)``; the checkpoint lives in
      ``cache_dir / "{model}-32px-{num_train}-e{epochs}"`` (the demo's naming).
    """
    tr = load_data(config, "train", config.num_train)
    te = load_data(config, "test", config.num_test)
    size = tr.images.shape[1]
    tag = f"{config.model}-{size}px-{config.num_train}-e{config.epochs}"
    if config.dataset != "synthetic":
        tag = f"{config.dataset}-{tag}"
    model, history = train(
        config.model,
        (tr.images, tr.labels),
        (te.images, te.labels),
        TrainConfig(epochs=config.epochs, seed=config.seed, progress=progress),
        checkpoint_dir=pathlib.Path(cache_dir) / tag,
        num_classes=num_classes(config.dataset),
        image_size=size,
    )
    return model, float((history.get("test_accuracy") or [np.nan])[-1])


def run_evaluate(
    out_dir: str | pathlib.Path,
    config: EvaluateConfig = EvaluateConfig(),
    *,
    cache_dir: str | pathlib.Path | None = None,
    progress: bool = True,
) -> dict:
    """Runs the evaluation and writes its files into ``out_dir``.

    Args:
      out_dir: output folder (created).
      config: the job's settings.
      cache_dir: model checkpoint cache (default ``out_dir / "checkpoints"``).
      progress: show training progress bars.

    Returns:
      The results dict (also written as ``results.json``).
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = pathlib.Path(cache_dir) if cache_dir else out / "checkpoints"
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model, accuracy = train_model(config, cache, progress=progress)
    timings["train"] = time.perf_counter() - t0
    te = load_data(config, "test", max(config.num_test, config.num_images))
    n = min(config.num_images, te.images.shape[0])
    images, labels = jnp.asarray(te.images[:n]), np.asarray(te.labels[:n])
    key = jax.random.key(config.seed)
    mfn = model_fn(model)
    preds = np.asarray(jnp.argmax(mfn(images), axis=-1))
    maps, cid_layer = _explain_all(model, images, preds, key, config, timings)

    t0 = time.perf_counter()
    curves, agreement = {}, {}
    for name in DESCRIPTIVE_METHODS:
        for store, truth in ((curves, labels), (agreement, preds)):
            frac, acc, area = descriptive_accuracy(
                mfn, images, truth, importance(maps[name], name), fill="mean"
            )
            store[name] = {
                "fractions": frac.tolist(),
                "accuracy": acc.tolist(),
                "area": area,
            }
    loc = {}
    for name in LOCALIZATION_METHODS:
        rec = np.asarray(
            localization_recall(importance(maps[name], name), te.boxes[:n])
        )
        loc[name] = {
            "recall_mean": float(rec.mean()),
            "recall_sem": float(rec.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0,
            "per_image": rec.tolist(),
        }
    timings["metrics"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    # Concentration needs foreground and background in every image.
    masks = np.asarray(te.masks[:n])
    both = masks.any(axis=(1, 2)) & (~masks).any(axis=(1, 2))
    pick = np.flatnonzero(both)[: config.fairness_images]
    if pick.size == 0:
        raise ValueError("no evaluated image has both foreground and background")
    fair, fair_fig = layer_fairness(
        model,
        images[pick],
        masks[pick],
        jax.random.fold_in(key, 7),
        layer=config.fairness_layer,
        cid_config=config.cid.replace(method="linearized"),
        decoder_config=(
            DecoderConfig(steps=config.fairness_decoder_steps, width=16)
            if config.fairness_decoder_steps
            else None
        ),
        decoder_images=load_data(config, "train", 2_000).images,
    )
    timings["fairness"] = time.perf_counter() - t0

    results = {
        "model": config.model,
        "dataset": config.dataset,
        "test_accuracy": accuracy,
        "num_images": n,
        "cid_layer": cid_layer,
        "cid_method": config.cid.method,
        "box_fraction": float(
            np.mean(
                (te.boxes[:n, 2] - te.boxes[:n, 0])
                * (te.boxes[:n, 3] - te.boxes[:n, 1])
                / (images.shape[1] * images.shape[2])
            )
        ),
        "descriptive_accuracy": curves,
        "prediction_agreement": agreement,
        "localization": loc,
        "layer_fairness": fair,
        "timings_s": timings,
        "config": {
            "ig_steps": config.ig_steps,
            "lime_samples": config.lime_samples,
            "fractions": list(DEFAULT_FRACTIONS),
        },
    }
    _plot_curves(curves, agreement).savefig(out / "descriptive_accuracy.png", dpi=120)
    fair_fig.savefig(out / "layer_fairness.png", dpi=120)
    (out / "localization.json").write_text(json.dumps(loc, indent=2))
    with open(out / "localization.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["method", "recall_mean", "recall_sem"])
        for name, row in loc.items():
            writer.writerow(
                [name, f"{row['recall_mean']:.4f}", f"{row['recall_sem']:.4f}"]
            )
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(results_markdown(results) + "\n")
    return results
