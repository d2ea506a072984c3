"""The main job: train a small model on the embedded data, then CID and RU.

``jax-infodiscard demo --out DIR`` trains (or reuses a cached checkpoint of)
a zoo model on the embedded synthetic data set, computes pixel-wise CID (and
RU with one decoder per layer) for its default layers on test images, and
writes:

* ``pixel_maps.png``: image + mask, then per-layer maps, normalised and in
  nats on one shared scale;
* ``layer_curves.png``: layer-wise mean CID / RU and concentration;
* ``summary.json``: accuracy, per-layer means, concentration, budgets,
  passes and timings;
* ``cid.npz`` (and ``ru.npz``): the full results (:meth:`CIDResult.load`).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

import jax_infodiscard as jid
from jax_infodiscard.data import SyntheticConfig, load_synthetic
from jax_infodiscard.models import feature_fn as make_feature_fn
from jax_infodiscard.plotting import plot_layer_curves, plot_pixel_maps
from jax_infodiscard.training.train import TrainConfig, train


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Settings of the demo job.

    Attributes:
      model: zoo model name.
      num_train: training images of the embedded data set.
      num_test: test images used for the accuracy.
      num_images: test images analysed with CID/RU.
      epochs: training epochs.
      image_size: image side (32 or 64).
      ru: also compute RU (trains one decoder per layer).
      decoder_steps: optimiser steps per RU decoder.
      decoder_width: channels of the RU decoders (16 keeps a decoder step
        around 0.2 s on a 2-core CPU).
      ru_steps: optax steps per lambda iteration of the RU solver (2 noise
        draws each); convolution gradients inside compiled loops are slow on
        XLA:CPU, so the demo keeps this small.
      cid: the CID configuration.
      seed: seed of the training run and of the CID/RU keys.
    """

    model: str = "convnet"
    num_train: int = 10_000
    num_test: int = 1_000
    num_images: int = 8
    epochs: int = 8
    image_size: int = 32
    ru: bool = True
    decoder_steps: int = 300
    decoder_width: int = 16
    ru_steps: int = 8
    cid: jid.CIDConfig = dataclasses.field(default_factory=jid.CIDConfig)
    seed: int = 0

    @classmethod
    def fast(cls, **changes) -> DemoConfig:
        """A short configuration (small data, short training; ~1.5 min on 2 cores)."""
        base = cls(
            num_train=3_000, num_test=500, num_images=4, epochs=4, decoder_steps=60
        )
        return dataclasses.replace(base, **changes)


def run_demo(
    out_dir: str | pathlib.Path,
    config: DemoConfig = DemoConfig(),
    *,
    cache_dir: str | pathlib.Path | None = None,
    progress: bool = True,
) -> dict:
    """Runs the demo and writes its figures and summary into ``out_dir``.

    Args:
      out_dir: output folder (created).
      config: the job's settings.
      cache_dir: where model and decoder checkpoints are kept between runs
        (default ``out_dir / "checkpoints"``).
      progress: show progress bars.

    Returns:
      The summary dict (also written as ``summary.json``).
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = pathlib.Path(cache_dir) if cache_dir else out / "checkpoints"
    timings: dict[str, float] = {}
    data_cfg = SyntheticConfig(image_size=config.image_size)

    t0 = time.perf_counter()
    train_set = load_synthetic("train", config.num_train, config=data_cfg)
    test_set = load_synthetic("test", config.num_test, config=data_cfg)
    timings["data_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    tag = f"{config.model}-{config.image_size}px-{config.num_train}-e{config.epochs}"
    model, history = train(
        config.model,
        (train_set.images, train_set.labels),
        (test_set.images, test_set.labels),
        TrainConfig(epochs=config.epochs, seed=config.seed, progress=progress),
        checkpoint_dir=cache / tag,
        num_classes=data_cfg.num_classes,
        image_size=config.image_size,
    )
    timings["train_s"] = time.perf_counter() - t0
    accuracy = (history.get("test_accuracy") or [float("nan")])[-1]

    layers = tuple(model.default_layers)
    fn = make_feature_fn(model, layers)
    n = config.num_images
    images = jnp.asarray(test_set.images[:n])
    masks = np.asarray(test_set.masks[:n])
    key = jax.random.key(config.seed)

    t0 = time.perf_counter()
    cid = jid.cid(fn, images, key, config=config.cid)
    jax.block_until_ready(cid.pixel)
    timings["cid_s"] = time.perf_counter() - t0
    cid = cid.to_numpy()
    cid.save(out / "cid.npz")
    maps = {"CID": cid.pixel}
    curves = {
        "CID mean": cid.mean,
        "CID concentration": np.asarray(jid.concentration(cid.pixel, masks)),
    }
    summary_layers = {
        name: {
            "cid_mean": float(cid.mean[i].mean()),
            "cid_concentration": float(curves["CID concentration"][i].mean()),
            "budget_over_beta": float(cid.budget[i].mean() / cid.beta),
            "converged": float(cid.converged[i].mean()),
            "passes_per_map": float(cid.passes[i].mean()),
        }
        for i, name in enumerate(layers)
    }

    if config.ru:
        from jax_infodiscard.models.decoder import decoder_fn
        from jax_infodiscard.training.decoder import (
            DecoderConfig,
            load_or_train_decoder,
        )

        t0 = time.perf_counter()
        dec_cfg = DecoderConfig(
            steps=config.decoder_steps, width=config.decoder_width, beta=config.cid.beta
        )
        decoders, mses = {}, {}
        for i, name in enumerate(layers):
            dec, metrics = load_or_train_decoder(
                fn,
                name,
                train_set.images[: min(4000, config.num_train)],
                dec_cfg,
                key=jax.random.fold_in(key, 100 + i),
                checkpoint_dir=cache / f"{tag}-decoders",
                progress=progress,
            )
            decoders[name] = decoder_fn(dec)
            mses[name] = float(metrics.heldout_mse or metrics.train_mse)
        timings["decoders_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ru_cfg = jid.RUConfig(
            steps=config.ru_steps,
            num_samples=2,
            **{
                f.name: getattr(config.cid, f.name)
                for f in dataclasses.fields(config.cid)
                if f.name not in ("steps", "num_samples", "method")
            },
        )
        ru = jid.ru(fn, decoders, images, key, layers=layers, config=ru_cfg)
        jax.block_until_ready(ru.pixel)
        timings["ru_s"] = time.perf_counter() - t0
        ru = ru.to_numpy()
        ru.save(out / "ru.npz")
        maps["RU"] = ru.pixel
        curves["RU mean"] = ru.mean
        curves["RU concentration"] = np.asarray(jid.concentration(ru.pixel, masks))
        for i, name in enumerate(layers):
            summary_layers[name].update(
                ru_mean=float(ru.mean[i].mean()),
                ru_concentration=float(curves["RU concentration"][i].mean()),
                decoder_test_mse=mses[name],
            )

    plot_pixel_maps(images, maps, layers, out / "pixel_maps.png", masks=masks)
    plot_layer_curves(
        layers,
        curves,
        out / "layer_curves.png",
        title=f"{config.model} on the embedded data set",
    )
    summary = {
        "model": config.model,
        "test_accuracy": float(accuracy),
        "num_images": n,
        "beta": config.cid.beta,
        "method": config.cid.method,
        "layers": summary_layers,
        "timings_s": timings,
        "devices": [str(d) for d in jax.devices()],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
