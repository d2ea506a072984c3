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
* ``results.md``: the tables of all three, as printed by the command;
* ``manifest.json``: settings, versions, status (see
  :mod:`jax_infodiscard.experiments.rundir`).

The model comes from the shared cache (:mod:`jax_infodiscard.experiments.cache`).
"""

from __future__ import annotations

import csv
import dataclasses
import io as _stdio
import os
import time
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

import jax_infodiscard as jid
from jax_infodiscard import baselines
from jax_infodiscard.data import TFDS_SPECS
from jax_infodiscard.evaluation.fairness import layer_fairness
from jax_infodiscard.evaluation.metrics import (
    DEFAULT_FRACTIONS,
    descriptive_accuracy,
    importance,
    localization_recall,
)
from jax_infodiscard.experiments.cache import ModelSpec, TrainedModel, train_or_load
from jax_infodiscard.experiments.data import Examples, load_examples
from jax_infodiscard.experiments.measure import measure, ru_step
from jax_infodiscard.experiments.rundir import RunFolder
from jax_infodiscard.models import feature_fn, model_fn, split_fn
from jax_infodiscard.models.sequential_adapter import to_sequential
from jax_infodiscard.training.decoder import DecoderConfig
from jax_infodiscard.training.train import TrainConfig
from jax_infodiscard.validation import check_int

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
    "cid_conv",
    "gradient",
    "gradient_x_input",
    "guided_backprop",
    "lrp_epsilon",
    "integrated_gradients",
    "lime",
    "smoothgrad",
    "random",
)
LOCALIZATION_METHODS = (
    "cid",
    "cid_conv",
    "cam",
    "grad_cam",
    "lrp_epsilon",
    "gradient",
    "random",
)
"""``cid``: CID of the model's last default layer (the logits); ``cid_conv``:
CID of its last convolution (an intermediate layer)."""

EXPLAINED = (
    "gradient",
    "gradient_x_input",
    "guided_backprop",
    "lrp_epsilon",
    "integrated_gradients",
    "lime",
    "cam",
    "grad_cam",
    "smoothgrad",
)
"""The explainers the job runs (each with the model form the registry,
:data:`jax_infodiscard.baselines.MODEL_FORMS`, names)."""


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

    def __post_init__(self):
        for name in (
            "image_size",
            "num_train",
            "num_test",
            "num_images",
            "epochs",
            "ig_steps",
            "lime_samples",
            "fairness_images",
        ):
            check_int(name, getattr(self, name), 1)
        check_int("fairness_decoder_steps", self.fairness_decoder_steps, 0)
        check_int("seed", self.seed, 0)
        if self.dataset != "synthetic" and (
            self.dataset not in TFDS_SPECS or not TFDS_SPECS[self.dataset].annotated
        ):
            annotated = [k for k, v in TFDS_SPECS.items() if v.annotated]
            raise ValueError(
                f"dataset must be 'synthetic' or an annotated tfds data set "
                f"{annotated} (localisation needs object boxes); got {self.dataset!r}"
            )

    def model_spec(self) -> ModelSpec:
        """The cache key of the evaluated model."""
        return ModelSpec(
            model=self.model,
            dataset=self.dataset,
            image_size=self.image_size,
            num_train=self.num_train,
            num_test=self.num_test,
            crop_scale=None if self.dataset == "synthetic" else 1.5,
            train=TrainConfig(epochs=self.epochs, seed=self.seed),
        )

    @classmethod
    def fast(cls, **changes) -> EvaluateConfig:
        """A short configuration (its cost: docs/benchmarks.md)."""
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
    forms = {"model_fn": mfn, "split": pair, "sequential": seq}
    options = {"integrated_gradients": {"steps": cfg.ig_steps}}
    options["lime"] = {"samples": cfg.lime_samples}
    maps = {}
    # Image keys fold_in(key, i): the order of EXPLAINED fixes each method's.
    for i, name in enumerate(EXPLAINED):
        t0 = time.perf_counter()
        model_form = forms[baselines.MODEL_FORMS[name]]
        out = baselines.explain(
            name,
            model_form,
            images,
            jax.random.fold_in(key, i),
            target=target,
            **options.get(name, {}),
        )
        maps[name] = np.asarray(jax.block_until_ready(out.maps))
        timings[name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    layer = model.default_layers[-1]
    layers = (last_conv, layer)
    res = measure(
        feature_fn(model, layers), images, key, layers=layers, cid_config=cfg.cid
    ).cid
    pixel = np.asarray(res.pixel)
    maps["cid_conv"], maps["cid"] = pixel[0], pixel[1]
    timings["cid"] = time.perf_counter() - t0
    maps["random"] = np.asarray(
        jax.random.uniform(jax.random.fold_in(key, 99), images.shape[:3])
    )
    return maps, (layer, last_conv)


def _kind(name: str) -> str:
    """The method behind a map name (``cid_conv`` is a CID map)."""
    return "cid" if name.startswith("cid") else name


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
        key=lambda n: (n == "random", not n.startswith("cid"), n),
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
            f"(cid) and of {results.get('cid_conv_layer')!r} (cid_conv) "
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


EvalData = Examples
"""The job's data: :class:`jax_infodiscard.experiments.data.Examples`."""


def load_data(config: EvaluateConfig, split: str, n: int) -> Examples:
    """``n`` examples (or the whole split, if smaller) of the job's data set.

    tfds data sets are cropped to 1.5x the object box, as in the paper.

    Raises:
      ValueError: unknown data set, or one without object boxes (CIFAR-10):
        localisation and concentration need them.
    """
    spec = config.model_spec()
    data = load_examples(
        config.dataset,
        split,
        n,
        image_size=config.image_size,
        crop_scale=spec.crop_scale,
    )
    if data.images.shape[0] == 0:
        raise ValueError(f"{config.dataset!r} split {split!r} has no examples")
    return data


def train_model(
    config: EvaluateConfig,
    cache_dir: str | os.PathLike | None = None,
    *,
    progress: bool = True,
) -> TrainedModel:
    """Trains ``config.model`` on the job's data, or loads it from the cache.

    Returns:
      A :class:`jax_infodiscard.experiments.cache.TrainedModel` (model,
      test accuracy, checkpoint folder, data).
    """
    return train_or_load(config.model_spec(), cache_dir, progress=progress)


def run_evaluate(
    out_dir: str | os.PathLike,
    config: EvaluateConfig = EvaluateConfig(),
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    overwrite: bool = False,
    argv: Sequence[str] | None = None,
) -> dict:
    """Runs the evaluation and writes its files into ``out_dir``.

    Args:
      out_dir: output folder (created); a folder holding a previous run is
        refused unless ``overwrite``.
      config: the job's settings.
      cache_dir: model cache (default:
        :func:`jax_infodiscard.experiments.cache.default_cache_dir`).
      progress: show training progress bars.
      overwrite: replace a previous run in ``out_dir``.
      argv: the command line, recorded in the manifest.

    Returns:
      The results dict (also written as ``results.json``).
    """
    folder = RunFolder.open(
        out_dir,
        command="evaluate",
        config=dataclasses.asdict(config),
        overwrite=overwrite,
        argv=argv,
        keep=[cache_dir] if cache_dir else (),
    )
    with folder.running():
        results = _evaluate(folder, config, cache_dir, progress)
        folder.complete()
    return results


def _evaluate(folder: RunFolder, config: EvaluateConfig, cache_dir, progress) -> dict:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    trained = train_model(config, cache_dir, progress=progress)
    model, accuracy = trained.model, trained.accuracy
    timings["train"] = time.perf_counter() - t0
    te = load_data(config, "test", max(config.num_test, config.num_images))
    n = min(config.num_images, te.images.shape[0])
    if n < config.num_images:
        warnings.warn(
            f"{config.dataset!r} has only {n} test images; evaluating {n}, not "
            f"num_images={config.num_images}",
            stacklevel=2,
        )
    images, labels = jnp.asarray(te.images[:n]), np.asarray(te.labels[:n])
    key = jax.random.key(config.seed)
    mfn = model_fn(model)
    preds = np.asarray(jnp.argmax(mfn(images), axis=-1))
    maps, (cid_layer, cid_conv_layer) = _explain_all(
        model, images, preds, key, config, timings
    )

    t0 = time.perf_counter()
    curves, agreement, loc = _metrics(mfn, images, labels, preds, te.boxes[:n], maps)
    timings["metrics"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fair, fair_fig = _fairness(config, trained, images, te.masks[:n], key)
    timings["fairness"] = time.perf_counter() - t0

    results = {
        "model": config.model,
        "dataset": config.dataset,
        "test_accuracy": accuracy,
        "num_images": n,
        "cid_layer": cid_layer,
        "cid_conv_layer": cid_conv_layer,
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
    _write(folder, results, fair_fig)
    return results


def _metrics(mfn, images, labels, preds, boxes, maps):
    """Descriptive accuracy (true labels and agreement with the prediction)
    and localisation recall of every method's maps."""
    n = images.shape[0]
    curves, agreement = {}, {}
    for name in DESCRIPTIVE_METHODS:
        for store, truth in ((curves, labels), (agreement, preds)):
            frac, acc, area = descriptive_accuracy(
                mfn, images, truth, importance(maps[name], _kind(name)), fill="mean"
            )
            store[name] = {
                "fractions": frac.tolist(),
                "accuracy": acc.tolist(),
                "area": area,
            }
    loc = {}
    for name in LOCALIZATION_METHODS:
        rec = np.asarray(
            localization_recall(importance(maps[name], _kind(name)), boxes)
        )
        loc[name] = {
            "recall_mean": float(rec.mean()),
            "recall_sem": float(rec.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0,
            "per_image": rec.tolist(),
        }
    return curves, agreement, loc


def _fairness(config: EvaluateConfig, trained, images, masks, key):
    """The rescaling check on the images with fore- and background (RU with
    decoders trained for each model unless ``fairness_decoder_steps=0``)."""
    masks = np.asarray(masks)
    both = masks.any(axis=(1, 2)) & (~masks).any(axis=(1, 2))
    pick = np.flatnonzero(both)[: config.fairness_images]
    if pick.size == 0:
        raise ValueError("no evaluated image has both foreground and background")
    step = None
    if config.fairness_decoder_steps:
        step = ru_step(
            images[pick],
            jax.random.fold_in(key, 7),
            decoder_images=trained.train_data.images[:2_000],
            decoder_config=DecoderConfig(
                steps=config.fairness_decoder_steps, width=16, beta=config.cid.beta
            ),
            cid_config=config.cid,
        )
    return layer_fairness(
        trained.model,
        images[pick],
        masks[pick],
        jax.random.fold_in(key, 7),
        layer=config.fairness_layer,
        cid_config=config.cid,
        ru_step=step,
    )


def _write(folder: RunFolder, results: dict, fair_fig) -> None:
    """The figures, tables and JSON of the evaluation."""
    curves = results["descriptive_accuracy"]
    agreement = results["prediction_agreement"]
    loc = results["localization"]
    folder.write_figure(
        "descriptive_accuracy.png", _plot_curves(curves, agreement), dpi=120
    )
    folder.write_figure("layer_fairness.png", fair_fig, dpi=120)
    folder.write_json("localization.json", loc)
    buf = _stdio.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(["method", "recall_mean", "recall_sem"])
    for name, row in loc.items():
        writer.writerow([name, f"{row['recall_mean']:.4f}", f"{row['recall_sem']:.4f}"])
    folder.write_text("localization.csv", buf.getvalue())
    folder.write_json("results.json", results)
    folder.write_text("results.md", results_markdown(results) + "\n")
