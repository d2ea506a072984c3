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
* ``cid.npz`` (and ``ru.npz``): the full results (:meth:`CIDResult.load`);
* ``manifest.json``: settings, versions, status (see
  :mod:`jax_infodiscard.experiments.rundir`).

The model and the RU decoders come from the shared cache
(:mod:`jax_infodiscard.experiments.cache`): a second demo with the same
settings reuses them.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

import jax_infodiscard as jid
from jax_infodiscard.experiments.cache import (
    ModelSpec,
    decoder_cache_dir,
    train_or_load,
)
from jax_infodiscard.experiments.rundir import RunFolder
from jax_infodiscard.models import feature_fn as make_feature_fn
from jax_infodiscard.plotting import plot_layer_curves, plot_pixel_maps
from jax_infodiscard.training.train import TrainConfig
from jax_infodiscard.validation import check_int


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
      ru_steps: iterations of the RU solver (each differentiates the network
        and the decoder for ``cid.samples`` draws).
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
    ru_steps: int = 48
    cid: jid.CIDConfig = dataclasses.field(default_factory=jid.CIDConfig)
    seed: int = 0

    def __post_init__(self):
        for name in ("num_train", "num_test", "num_images", "epochs", "image_size"):
            check_int(name, getattr(self, name), 1)
        for name in ("decoder_steps", "decoder_width", "ru_steps"):
            check_int(name, getattr(self, name), 1)
        check_int("seed", self.seed, 0)
        if self.num_images > self.num_test:
            raise ValueError(
                f"num_images={self.num_images} exceeds the {self.num_test} test "
                "images (num_test)"
            )
        if not isinstance(self.cid, jid.CIDConfig):
            raise TypeError(f"cid must be a CIDConfig, got {type(self.cid).__name__}")

    def model_spec(self) -> ModelSpec:
        """The cache key of the demo's model."""
        return ModelSpec(
            model=self.model,
            image_size=self.image_size,
            num_train=self.num_train,
            num_test=self.num_test,
            train=TrainConfig(epochs=self.epochs, seed=self.seed),
        )

    @classmethod
    def fast(cls, **changes) -> DemoConfig:
        """A short configuration (small data, short training; ~1.5 min on 2 cores)."""
        base = cls(
            num_train=3_000, num_test=500, num_images=4, epochs=4, decoder_steps=60
        )
        return dataclasses.replace(base, **changes)


def run_demo(
    out_dir: str | os.PathLike,
    config: DemoConfig = DemoConfig(),
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    overwrite: bool = False,
    argv: Sequence[str] | None = None,
) -> dict:
    """Runs the demo and writes its figures and summary into ``out_dir``.

    Args:
      out_dir: output folder (created); a folder holding a previous run is
        refused unless ``overwrite``.
      config: the job's settings.
      cache_dir: model and decoder cache (default:
        :func:`jax_infodiscard.experiments.cache.default_cache_dir`).
      progress: show progress bars.
      overwrite: replace a previous run in ``out_dir``.
      argv: the command line, recorded in the manifest.

    Returns:
      The summary dict (also written as ``summary.json``).

    Raises:
      RunFolderError: ``out_dir`` holds a previous run (and not
        ``overwrite``) or is a non-empty folder that is not a run folder.
    """
    folder = RunFolder.open(
        out_dir,
        command="demo",
        config=dataclasses.asdict(config),
        overwrite=overwrite,
        argv=argv,
        keep=[cache_dir] if cache_dir else (),
    )
    with folder.running():
        summary = _demo(folder, config, cache_dir, progress)
        folder.complete(summary={k: summary[k] for k in ("test_accuracy", "layers")})
    return summary


def _demo(folder: RunFolder, config: DemoConfig, cache_dir, progress: bool) -> dict:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    trained = train_or_load(config.model_spec(), cache_dir, progress=progress)
    timings["train_s"] = time.perf_counter() - t0
    model, accuracy = trained.model, trained.accuracy
    train_set, test_set = trained.train_data, trained.test_data

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
    folder.save_result("cid.npz", cid)
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
        dec_images = train_set.images[: min(4000, config.num_train)]
        dec_dir = decoder_cache_dir(trained.path, num_images=len(dec_images))
        for i, name in enumerate(layers):
            dec, metrics = load_or_train_decoder(
                fn,
                name,
                dec_images,
                dec_cfg,
                key=jax.random.fold_in(key, 100 + i),
                checkpoint_dir=dec_dir,
                progress=progress,
            )
            decoders[name] = decoder_fn(dec)
            mses[name] = float(metrics.heldout_mse or metrics.train_mse)
        timings["decoders_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ru_cfg = jid.RUConfig(
            steps=config.ru_steps,
            **{
                f.name: getattr(config.cid, f.name)
                for f in dataclasses.fields(config.cid)
                if f.name != "steps"
            },
        )
        ru = jid.ru(fn, decoders, images, key, layers=layers, config=ru_cfg)
        jax.block_until_ready(ru.pixel)
        timings["ru_s"] = time.perf_counter() - t0
        ru = ru.to_numpy()
        folder.save_result("ru.npz", ru)
        maps["RU"] = ru.pixel
        curves["RU mean"] = ru.mean
        curves["RU concentration"] = np.asarray(jid.concentration(ru.pixel, masks))
        for i, name in enumerate(layers):
            summary_layers[name].update(
                ru_mean=float(ru.mean[i].mean()),
                ru_concentration=float(curves["RU concentration"][i].mean()),
                decoder_test_mse=mses[name],
            )

    plot_pixel_maps(images, maps, layers, folder.record("pixel_maps.png"), masks=masks)
    plot_layer_curves(
        layers,
        curves,
        folder.record("layer_curves.png"),
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
    folder.write_json("summary.json", summary)
    return summary
