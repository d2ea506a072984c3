"""The main job: train a small model on the embedded data, then CID and RU.

``jax-infodiscard demo --out DIR`` trains (or reuses a cached checkpoint of)
a zoo model on the embedded synthetic data set, computes pixel-wise CID (and
RU with one decoder per layer) for its default layers on test images, and
writes:

* ``pixel_maps.png``: each image with its mask, true and predicted class,
  then per-layer maps, normalised per map and in nats on one scale per
  metric; maps of solves that did not converge, or of an RU decoder that
  learned nothing, are greyed out with the reason written on them;
* ``layer_curves.png``: layer-wise mean CID / RU, concentration and the
  solver's ``linearity`` (mean over images, band of one standard deviation);
* ``summary.json``: accuracy, per-layer means, concentration, convergence,
  regime diagnostics, RU decoder quality, per-image labels, timings, with
  units and a definitions block (:data:`DEFINITIONS`);
* ``cid.npz`` (and ``ru.npz``): the full results (:meth:`CIDResult.load`);
* ``manifest.json``: settings, versions, status (see
  :mod:`jax_infodiscard.experiments.rundir`).

The console shows each phase with its expected time on an idle CPU (a cost
model calibrated on the project's machine, docs/benchmarks.md), a status
line per layer, the per-layer table (:func:`format_summary`), the
warnings, and the files written.

The model and the RU decoders come from the shared cache
(:mod:`jax_infodiscard.experiments.cache`): a second demo with the same
settings reuses them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

import jax_infodiscard as jid
from jax_infodiscard.core.results import REPRODUCIBILITY_THRESHOLD
from jax_infodiscard.data import SHAPE_NAMES
from jax_infodiscard.experiments.cache import (
    ModelSpec,
    cached_decoder_layers,
    decoder_cache_dir,
    model_cache_dir,
    train_or_load,
)
from jax_infodiscard.experiments.measure import (
    Decoders,
    Listener,
    Measurement,
    measure,
)
from jax_infodiscard.experiments.rundir import MANIFEST, RunFolder
from jax_infodiscard.models import feature_fn as make_feature_fn
from jax_infodiscard.models import model_fn
from jax_infodiscard.plotting import plot_layer_curves, plot_pixel_maps
from jax_infodiscard.training.decoder import (
    LEARNED_NOTHING,
    NO_INFORMATION,
    RECOVERY_MARGIN,
    DecoderConfig,
)
from jax_infodiscard.training.train import TrainConfig
from jax_infodiscard.validation import check_int, check_names, check_number

__all__ = [
    "ACCURACY_WARNING",
    "DECODER_LEARNED_NOTHING",
    "DEFINITIONS",
    "DemoConfig",
    "format_summary",
    "run_demo",
]

ACCURACY_WARNING = 0.70
"""Below this test accuracy the demo warns that the model is barely trained."""

DECODER_LEARNED_NOTHING = LEARNED_NOTHING
"""An RU decoder whose held-out MSE is at least this share of the image
variance (the MSE of always answering the mean image) counts as having learned
(almost) nothing (:data:`jax_infodiscard.training.decoder.LEARNED_NOTHING`)."""

DEFINITIONS = {
    "cid_mean": "mean over pixels and images of the pixel-wise CID: entropy of "
    "the input noise the layer ignores, nats per pixel (higher = more "
    "discarded)",
    "cid_mean_se": "Monte-Carlo standard error of cid_mean: how much another "
    "solver key would move it on the same images (not the spread over images)",
    "cid_reproducibility": "mean over images of the share of each map's "
    "variance over pixels that is signal rather than Monte-Carlo noise; maps "
    f"below {REPRODUCIBILITY_THRESHOLD} are not reproducible at this beta and "
    "are greyed out (their mean with its cid_mean_se still stands)",
    "cid_concentration": "mean CID on the background minus on the foreground "
    "(nats); > 0: the layer discards the background more than the object",
    "cid_converged": "share of the (image) solves whose measured noise budget "
    "is within budget_tol of beta",
    "cid_budget_over_beta": "measured noise budget E||h(x')-f||^2 / delta_f^2 "
    "divided by beta (1 = the budget was met)",
    "cid_linearity": "true budget of the closed-form (linear-regime) sigma "
    "divided by beta; 1 = the layer is linear over the noise, larger = "
    "further from it",
    "cid_mean_shift": "share of the budget that is the squared shift of the "
    "mean feature ||E h(x') - f||^2 (0 in the linear regime)",
    "cid_entropy_gain": "mean CID of the solution minus that of the closed "
    "form rescaled to the same budget (nats per pixel; > 0 when the "
    "optimum differs from the linear shape)",
    "passes_per_map": "model passes (forward, VJP or JVP) per image and layer",
    "ru_*": "the same quantities for RU, the entropy of the decoder's "
    "reconstruction error (nats per pixel; higher = the input is worse "
    "recovered from the feature); null where RU was not solved",
    "ru_solved": "whether RU was solved at the layer: by default only where the "
    f"decoder's held-out MSE is at most {1 - RECOVERY_MARGIN:g} x that of the "
    "mean training image (decoder_verdict 'recovers')",
    "decoder_verdict": "'recovers' (RU solved); 'undertrained' (the ridge "
    "readout recovers more than the decoder: its RU would show its own error); "
    f"'{NO_INFORMATION}' (neither beats the mean image: the layer keeps no "
    "recoverable image information and RU is at its ceiling, the entropy of "
    "the pixel given nothing, 0.5 log(2 pi e Var x_i))",
    "decoder_heldout_mse": "the RU decoder's mean squared reconstruction error "
    "on held-out images (squared unit-range pixel values)",
    "decoder_mse_over_variance": "decoder_heldout_mse divided by the variance "
    "of the image values; 1 = no better than the mean of all pixel values",
    "timings_s": "wall-clock seconds of each phase (compilation included)",
}
"""Meaning of the fields of ``summary.json`` (also written into it)."""

UNITS = {
    "cid_mean": "nats per pixel",
    "cid_mean_se": "nats per pixel",
    "cid_concentration": "nats per pixel",
    "cid_entropy_gain": "nats per pixel",
    "ru_mean": "nats per pixel",
    "ru_mean_se": "nats per pixel",
    "ru_concentration": "nats per pixel",
    "ru_entropy_gain": "nats per pixel",
    "beta": "squared unit-range pixel values (mean noise variance per unit)",
    "decoder_heldout_mse": "squared unit-range pixel values",
    "test_accuracy": "fraction of test images",
    "*_converged": "fraction of images",
    "*_budget_over_beta, *_linearity, *_mean_shift, "
    "decoder_mse_over_variance": "ratio (no unit)",
    "timings_s": "seconds",
}
"""Units of the fields of ``summary.json`` (also written into it)."""

# Cost model of the phases on an idle CPU, for the expected times printed
# before each phase: seconds per unit of work, calibrated on `demo --fast`
# runs alone on the project's machine, with and without the compilation
# cache, and on benchmarks/bench_decoders.py for the decoders (the runs and
# their load are in docs/benchmarks.md).
_IDLE_CPU_S = {
    "train_compile": 25.0,
    "train_image_epoch": 1.15e-3,
    "cid_layer_compile": 6.0,
    # Per map, scaled by passes (x1.11 for CID, x1.16 for RU) for the solver's
    # early-window safeguard, added after the calibration, then by the passes
    # of the adaptive default over the four demo layers against the fixed
    # 96 steps (benchmarks/bench_cid.py, docs/accuracy.md: x0.64).
    "cid_map": 1.4,  # optimize, adaptive stopping
    # RU decoders, per layer, trained together (one forward pass and one
    # compiled step for all layers): the fixed part (compilation, the ridge
    # readouts, the evaluations and the checkpoint) and each step's share;
    # docs/benchmarks.md, "The two commands".
    "decoder_compile": 20.0,
    "decoder_step": 0.088,
    "ru_layer_compile": 4.0,
    "ru_map": 5.8,  # 48 steps; the decoder dominates each pass
}


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
      decoder_steps: optimiser steps of the RU decoders (one per layer, all
        trained together on the same batches).
      decoder_width: channels of the RU decoders.
      decoder_batch_size: images per decoder training step.
      decoder_learning_rate: peak learning rate of the decoders (cosine). 1e-2
        reconstructs better than 3e-3 at the same steps
        (``benchmarks/bench_decoders.py``, numbers in docs/ru.md).
      decoder_images: training images the decoders see (at most num_train).
      ru_unlearned: what to do at layers whose decoder does not recover
        the image (its verdict, see
        :func:`~jax_infodiscard.training.decoder.decoder_verdict`, is not
        ``"recovers"``): ``"skip"`` their RU solve (default: their maps would
        only show the decoder's error, or the ceiling where the layer keeps no
        recoverable image information, and the solve costs as much as a
        useful one) or ``"solve"`` it anyway (the maps are greyed out).
      ru_steps: iterations of the RU solver (each differentiates the network
        and the decoder for ``cid.samples`` draws).
      cid: the CID configuration.
      seed: seed of the training run and of the CID/RU keys.
      layers: layers to analyse (``None``: the model's default layers).
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
    decoder_batch_size: int = 32
    decoder_learning_rate: float = 1e-2
    decoder_images: int = 4_000
    ru_steps: int = 48
    ru_unlearned: str = "skip"
    cid: jid.CIDConfig = dataclasses.field(default_factory=jid.CIDConfig)
    seed: int = 0
    layers: tuple[str, ...] | None = None

    def __post_init__(self):
        for name in ("num_train", "num_test", "num_images", "epochs", "image_size"):
            check_int(name, getattr(self, name), 1)
        for name in (
            "decoder_steps",
            "decoder_width",
            "decoder_batch_size",
            "decoder_images",
            "ru_steps",
        ):
            check_int(name, getattr(self, name), 1)
        check_number("decoder_learning_rate", self.decoder_learning_rate, positive=True)
        if self.ru_unlearned not in ("skip", "solve"):
            raise ValueError(
                f"ru_unlearned must be 'skip' or 'solve', got {self.ru_unlearned!r}"
            )
        check_int("seed", self.seed, 0)
        if self.layers is not None:  # a name or names, distinct, as a tuple
            object.__setattr__(self, "layers", check_names("layers", self.layers))
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

    def ru_config(self) -> jid.RUConfig:
        """The RU solver's configuration: the CID one with ``ru_steps`` steps."""
        return jid.RUConfig.from_cid(self.cid, steps=self.ru_steps)

    def decoder_config(self) -> DecoderConfig:
        """The RU decoders' configuration: the ``decoder_*`` settings, trained
        at the noise level of the CID budget (``cid.beta``)."""
        return DecoderConfig(
            steps=self.decoder_steps,
            width=self.decoder_width,
            batch_size=self.decoder_batch_size,
            learning_rate=self.decoder_learning_rate,
            beta=self.cid.beta,
        )

    @classmethod
    def fast(cls, **changes) -> DemoConfig:
        """A short configuration: small data, short training, 4 images."""
        base = cls(
            num_train=3_000, num_test=500, num_images=4, epochs=4, decoder_steps=60
        )
        return dataclasses.replace(base, **changes)


# ----------------------------------------------------------------- console
def _duration(seconds: float) -> str:
    """``"45 s"``, ``"2 min 5 s"``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if rest else f"{minutes} min"


class _Console:
    """Phase headings, status lines and progress bars of the demo."""

    def __init__(self, verbose: bool, progress: bool, num_phases: int):
        self.verbose, self.progress = verbose, progress
        self.num_phases, self.index = num_phases, 0
        self.on_cpu = jax.default_backend() == "cpu"

    def say(self, text: str) -> None:
        if self.verbose:
            tqdm.write(text, file=sys.stdout)
            sys.stdout.flush()  # lines arrive in logs as they happen

    def phase(self, title: str, expected_s: float | None) -> float:
        """Prints ``[i/n] title`` and the expected time on an idle CPU;
        returns the clock."""
        self.index += 1
        note = ""
        if expected_s is not None and self.on_cpu:
            note = f", about {_duration(expected_s)} on an idle 2-core CPU"
        self.say(f"[{self.index}/{self.num_phases}] {title}{note}")
        return time.perf_counter()

    def done(self, start: float, what: str = "") -> float:
        seconds = time.perf_counter() - start
        self.say(f"      done in {_duration(seconds)}{f': {what}' if what else ''}")
        return seconds

    @contextmanager
    def units(self, label: str, total: int) -> Iterator[Callable[[str], None]]:
        """A status line per finished unit (a layer); while one runs, a bar's
        clock (or, without bars, a line every 30 s) shows that work goes on.

        Yields ``finish(text)``, to call when a unit is done.
        """
        start = time.perf_counter()
        bar = tqdm(
            total=total,
            desc=f"      {label}",
            disable=not (self.progress and self.verbose),
            leave=False,
            bar_format="{desc}: {n}/{total} layers [{elapsed}]",
        )
        stop = threading.Event()
        done = [0]  # a disabled tqdm bar does not count

        def tick():
            last = time.perf_counter()
            while not stop.wait(1.0):
                if not bar.disable:
                    bar.refresh()
                elif time.perf_counter() - last >= 30:
                    last = time.perf_counter()
                    self.say(
                        f"      {label}: {done[0]}/{total} layers done, still "
                        f"working ({_duration(last - start)})"
                    )

        thread = threading.Thread(target=tick, daemon=True)
        thread.start()

        def finish(text: str) -> None:
            done[0] += 1
            bar.update(1)
            self.say(f"      {label} {done[0]}/{total}: {text}")

        try:
            yield finish
        finally:
            stop.set()
            thread.join()
            bar.close()


# ---------------------------------------------------------------- numbers
def _round(x: float, digits: int = 4) -> float | None:
    """``x`` to ``digits`` significant digits (``None`` for NaN/inf)."""
    x = float(x)
    if not math.isfinite(x):
        return None
    if x == 0:
        return 0.0
    return round(x, digits - 1 - math.floor(math.log10(abs(x))))


def _layer_note(outputs: dict, j: int) -> str:
    """Status of layer ``j`` of an engine group's ``(B, L_group, ...)`` outputs."""
    converged = np.asarray(outputs["converged"])[:, j]
    return (
        f"mean {float(np.mean(outputs['pixel'][:, j])):+.2f} nats, "
        f"{int(np.sum(converged))}/{converged.shape[0]} converged, "
        f"linearity {float(np.mean(outputs['linearity'][:, j])):.2f}"
    )


class _DemoListener(Listener):
    """Shows the measuring room's phases on the demo's console: a heading
    with the expected time, a status line per finished layer."""

    def __init__(self, console: _Console, config: DemoConfig, images: int, dec_dir):
        self.console, self.config = console, config
        self.images, self.dec_dir = images, dec_dir
        self.known = config.model == "convnet" and config.image_size == 32
        self.stack = ExitStack()
        self.finish: Callable[[str], None] = lambda text: None

    def _expected(self, kind: str, layers: int) -> float | None:
        if not self.known:
            return None
        return layers * (
            _IDLE_CPU_S[f"{kind}_layer_compile"]
            + self.images * _IDLE_CPU_S[f"{kind}_map"]
        )

    def phase(self, name: str, **facts: Any) -> None:
        layers = facts["layers"]
        if name == "cid":
            cfg = self.config.cid
            self.console.phase(
                f"CID ({cfg.method}): {len(layers)} layers x {self.images} images",
                self._expected("cid", len(layers))
                if cfg.method == "optimize"
                else None,
            )
            self.finish = self.stack.enter_context(
                self.console.units("CID", len(layers))
            )
        elif name == "decoders":
            self._decoders_heading(layers)
        else:
            self._ru_heading(layers, facts["skipped"])
            self.finish = self.stack.enter_context(
                self.console.units("RU", len(layers))
            )

    def _decoders_heading(self, layers: Sequence[str]) -> None:
        config = self.config
        reused = cached_decoder_layers(self.dec_dir, layers, config.decoder_config())
        missing = [n for n in layers if n not in reused]
        expected = None
        if self.known:
            expected = 2.0 + len(missing) * (
                _IDLE_CPU_S["decoder_compile"]
                + config.decoder_steps * _IDLE_CPU_S["decoder_step"]
            )
        cached = len(layers) - len(missing)
        self.console.phase(
            f"RU decoders: {len(layers)} layers trained together, "
            f"{config.decoder_steps} steps of {config.decoder_batch_size} images"
            + (f" ({cached} cached)" if cached else ""),
            expected,
        )

    def _ru_heading(self, layers: Sequence[str], skipped: Sequence[str]) -> None:
        cfg = self.config.ru_config()
        self.console.phase(
            f"RU ({cfg.method}, {cfg.steps} steps): {len(layers)} layers x "
            f"{self.images} images"
            + (
                f" (skipped, the decoder does not recover the image: "
                f"{', '.join(skipped)})"
                if skipped
                else ""
            ),
            self._expected("ru", len(layers)),
        )

    def group(self, metric, layers, outputs, seconds) -> None:
        for j, name in enumerate(layers):
            self.finish(f"{name}, {_layer_note(outputs, j)} ({_duration(seconds)})")

    def decoders(self, decoders: Decoders) -> None:
        for name, m in decoders.metrics.items():
            self.console.say(
                f"      decoder {name}: held-out MSE {m.eval_mse:.2e} = "
                f"{m.mse_over_variance:.2f} x the image variance" + f" ({m.verdict})"
            )

    def done(self, name: str, seconds: float) -> None:
        self.stack.close()
        self.console.say(f"      done in {_duration(seconds)}")


# -------------------------------------------------------------------- job
def run_demo(
    out_dir: str | os.PathLike,
    config: DemoConfig = DemoConfig(),
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    verbose: bool = True,
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
      verbose: print phase headings, status lines and the summary table.
      overwrite: replace a previous run in ``out_dir``.
      argv: the command line, recorded in the manifest.

    Returns:
      The summary dict (also written as ``summary.json``); its ``"files"``
      lists every file written into ``out_dir``.

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
    console = _Console(verbose, progress, num_phases=5 if config.ru else 3)
    with folder.running():
        summary = _demo(folder, config, cache_dir, progress, console)
        folder.complete(
            summary={k: summary[k] for k in ("test_accuracy", "layers", "warnings")}
        )
    summary["files"] = sorted({*folder.manifest.get("files", []), MANIFEST})
    if verbose:
        console.say(format_summary(summary, out_dir))
    return summary


def _expected_training(config: DemoConfig, cached: bool) -> float | None:
    if config.model != "convnet" or config.image_size != 32:
        return None
    if cached:
        return 5.0
    work = config.num_train * config.epochs * _IDLE_CPU_S["train_image_epoch"]
    return _IDLE_CPU_S["train_compile"] + work


def _demo(
    folder: RunFolder, config: DemoConfig, cache_dir, progress: bool, console
) -> dict:
    timings: dict[str, float] = {}
    warnings_: list[str] = []
    trained, accuracy = _model_phase(config, cache_dir, progress, console, timings)
    if accuracy < ACCURACY_WARNING:
        warnings_.append(
            f"the model is barely trained (test accuracy {accuracy:.1%} < "
            f"{ACCURACY_WARNING:.0%}): its maps describe a network that has not "
            "learned the task; train longer (more --epochs, or drop --fast)"
        )
        console.say(f"      warning: {warnings_[-1]}")
    model, test_set = trained.model, trained.test_data
    layers = tuple(config.layers or model.default_layers)
    unknown = [n for n in layers if n not in model.layer_names]
    if unknown:
        raise ValueError(
            f"layers {unknown} are not layers of {config.model!r}; it has "
            f"{list(model.layer_names)}"
        )
    n = config.num_images
    images = jnp.asarray(test_set.images[:n])
    masks = np.asarray(test_set.masks[:n])
    labels = np.asarray(test_set.labels[:n])
    predicted = np.asarray(jnp.argmax(model_fn(model)(images), axis=-1))
    m = _measure_phases(config, trained, layers, images, masks, progress, console)
    timings.update(m.seconds)
    folder.save_result("cid.npz", m.cid)
    if m.ru is not None:
        folder.save_result("ru.npz", m.ru)
    tables = _tables(config, m, n)
    warnings_ += tables["warnings"]
    t0 = console.phase("figures and summary", 5.0)
    figure = dict(images=images, masks=masks, labels=labels, predicted=predicted)
    _figures(folder, config, accuracy, figure, m, tables, warnings_)
    summary = {
        "definitions": DEFINITIONS,
        "units": UNITS,
        "model": config.model,
        "test_accuracy": _round(accuracy),
        "epochs": config.epochs,
        "num_train": config.num_train,
        "num_images": n,
        "beta": config.cid.beta,
        "method": config.cid.method,
        "images": [
            {
                "test_index": b,
                "label": SHAPE_NAMES[int(labels[b])],
                "predicted": SHAPE_NAMES[int(predicted[b])],
            }
            for b in range(n)
        ],
        "layers": tables["rows"],
        "warnings": warnings_,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "devices": [str(d) for d in jax.devices()],
    }
    folder.write_json("summary.json", summary)
    timings["figures_s"] = console.done(t0)
    summary["timings_s"]["figures_s"] = round(timings["figures_s"], 1)
    return summary


def _model_phase(config: DemoConfig, cache_dir, progress, console, timings):
    """Trains or loads the model; returns it and its test accuracy."""
    spec = config.model_spec()
    cached = model_cache_dir(spec, cache_dir).exists()
    t0 = console.phase(
        f"model: {'load (or finish training)' if cached else 'train'} "
        f"{config.model} on {config.num_train:,} embedded images, "
        f"{config.epochs} epochs",
        _expected_training(config, cached),
    )
    trained = train_or_load(spec, cache_dir, progress=progress)
    accuracy = float(trained.accuracy)
    timings["train_s"] = console.done(t0, f"test accuracy {accuracy:.1%}")
    return trained, accuracy


def _measure_phases(config, trained, layers, images, masks, progress, console):
    """CID, decoders and RU through the measuring room (timings ``*_s``)."""
    fn = make_feature_fn(trained.model, layers)
    dec_images = trained.train_data.images[
        : min(config.decoder_images, config.num_train)
    ]
    dec_dir = decoder_cache_dir(trained.path, num_images=len(dec_images))
    m = measure(
        fn,
        images,
        jax.random.key(config.seed),
        layers=layers,
        cid_config=config.cid,
        masks=masks,
        ru_config=config.ru_config(),
        decoder_images=dec_images if config.ru else None,
        decoder_config=config.decoder_config(),
        decoder_folder=dec_dir,
        solve_unlearned=config.ru_unlearned == "solve",
        listener=_DemoListener(console, config, images.shape[0], dec_dir),
        # The demo reports convergence and linearity itself (status lines,
        # table, warnings list), once and in its own words.
        quiet=True,
        progress=progress and console.verbose,
    )
    return m


def _tables(config: DemoConfig, m: Measurement, n: int) -> dict:
    """Per-layer rows, curves, diagnostics, grey-out flags and warnings."""
    layers, cid = m.layers, m.cid
    curves = {"CID mean": cid.mean, "CID concentration": m.concentration}
    diag = {"CID linearity": cid.linearity}
    unreliable = {"CID": _flags(cid.converged, cid.reproducibility)}
    rows = {name: _result_row("cid", cid, i, curves) for i, name in enumerate(layers)}
    for i, name in enumerate(layers):
        rows[name]["passes_per_map"] = _round(cid.passes[i].mean())
    warnings_: list[str] = []
    if config.ru:
        warnings_ += _ru_tables(m, n, rows, curves, diag, unreliable)
    warnings_ += _regime_warnings(m)
    return {
        "rows": rows,
        "curves": curves,
        "diag": diag,
        "unreliable": unreliable,
        "maps": {"CID": cid.pixel}
        | ({"RU": _spread(m, "pixel", cid.pixel.shape[1:])} if config.ru else {}),
        "warnings": warnings_,
    }


def _flags(converged, reproducibility) -> np.ndarray:
    """Grey-out reasons of maps (same shape): ``"not converged"``, else
    ``"not reproducible"`` where the reproducibility is below
    :data:`~jax_infodiscard.core.results.REPRODUCIBILITY_THRESHOLD`, else
    ``""`` (NaN reproducibility, from files without error bars, flags
    nothing)."""
    repro = np.asarray(reproducibility, np.float64)
    flags = np.where(repro < REPRODUCIBILITY_THRESHOLD, "not reproducible", "")
    flags = np.where(np.asarray(converged), flags, "not converged")
    return flags.astype(object)


def _spread(m: Measurement, field: str, shape, fill=np.nan) -> np.ndarray:
    """RU's ``field`` over all layers ``(L, *shape)``, ``fill`` where RU was not
    solved."""
    values = None
    if m.ru is not None:
        values = (
            m.ru_concentration if field == "concentration" else getattr(m.ru, field)
        )
    return _pad_layers(m.ru_layers, values, m.layers, shape, fill)


def _ru_tables(m: Measurement, n: int, rows, curves, diag, unreliable) -> list[str]:
    """Adds RU's rows, curves and flags; returns the decoder warnings."""
    layers = m.layers
    curves["RU mean"] = _spread(m, "mean", (n,))
    curves["RU concentration"] = _spread(m, "concentration", (n,))
    diag["RU linearity"] = _spread(m, "linearity", (n,))
    ru_converged = _spread(m, "converged", (n,), fill=False)
    ru_repro = _spread(m, "reproducibility", (n,))
    flags = np.full((len(layers), n), "", dtype=object)
    warnings_ = []
    for i, name in enumerate(layers):
        metrics = m.decoders.metrics[name]
        rows[name].update(
            {
                "decoder_heldout_mse": _round(metrics.eval_mse),
                "decoder_mse_over_variance": _round(metrics.mse_over_variance),
                "decoder_learned_nothing": metrics.learned_nothing,
                "decoder_verdict": metrics.verdict,
                "decoder_steps": metrics.steps,
            }
        )
        solved = name in m.ru_layers
        rows[name]["ru_solved"] = solved
        if solved:
            j = m.ru_layers.index(name)
            rows[name].update(_result_row("ru", m.ru, j, curves, at=i))
        else:
            rows[name].update(dict.fromkeys(RU_FIELDS))
        if metrics.verdict == NO_INFORMATION:
            flags[i, :] = "no recoverable image information: RU at its ceiling"
            warnings_.append(
                f"RU {name}: this layer keeps no recoverable image information "
                "(neither the decoder nor its ridge readout beats the mean "
                f"image by {RECOVERY_MARGIN:.0%}; held-out MSE / image "
                "variance = "
                f"{rows[name]['decoder_mse_over_variance']:.2f}): RU is "
                "at its ceiling there, the entropy of each pixel given nothing "
                "(0.5 log(2 pi e Var x_i))" + ("" if solved else "; not solved")
            )
        elif metrics.learned_nothing:
            flags[i, :] = (
                "decoder learned nothing"
                if solved
                else "not solved: decoder learned nothing"
            )
            warnings_.append(
                f"RU {name}: the decoder learned (almost) nothing (held-out "
                "MSE / image variance = "
                f"{rows[name]['decoder_mse_over_variance']:.2f}); "
                + (
                    "its RU maps are only its error map (greyed out)"
                    if solved
                    else "RU was not solved there (ru_unlearned='skip')"
                )
                + ". Train the decoders longer for real analyses"
            )
        else:
            flags[i] = _flags(ru_converged[i], ru_repro[i])
    unreliable["RU"] = flags
    return warnings_


def _regime_warnings(m: Measurement) -> list[str]:
    """Warnings on the linear method far from its regime and unmet budgets."""
    warnings_ = []
    for label, res in (("CID", m.cid), ("RU", m.ru)):
        if res is None:
            continue
        lin = res.linearity.mean(axis=1)
        far = [
            f"{n_} ({v:.3g})" for n_, v in zip(res.layers, lin, strict=True) if v > 1.2
        ]
        if res.method == "linear" and far:
            warnings_.append(
                f"{label}: method 'linear' far from the linear regime at "
                f"{', '.join(far)} (linearity); its maps overspend the budget "
                "there: use the default method 'optimize'"
            )
        bad = int(np.sum(~res.converged))
        if bad:
            warnings_.append(
                f"{label}: {bad} of {res.converged.size} solves did not meet the "
                "budget (converged=False); their maps are greyed out"
            )
        low = res.converged & (res.reproducibility < REPRODUCIBILITY_THRESHOLD)
        where = [n_ for n_, row in zip(res.layers, low, strict=True) if row.any()]
        if where:
            warnings_.append(
                f"{label}: {int(low.sum())} map(s) at {', '.join(where)} are not "
                f"reproducible at this beta (reproducibility < "
                f"{REPRODUCIBILITY_THRESHOLD}: another key gives a visibly "
                "different map); they are greyed out, their mean with its "
                "Monte-Carlo error (±MC) still stands. For a reproducible "
                "picture use the small-noise limit, method='linear' "
                "(docs/accuracy.md)"
            )
    return warnings_


def _figures(folder, config, accuracy, figure: dict, m, tables, warnings_):
    """``pixel_maps.png`` and ``layer_curves.png``; ``figure`` holds the
    images, masks, labels and predicted classes."""
    layers, n = m.layers, figure["images"].shape[0]
    unreliable, rows = tables["unreliable"], tables["rows"]
    caption = _caption(config, accuracy, n, warnings_)
    plot_pixel_maps(
        figure["images"],
        tables["maps"],
        layers,
        folder.record("pixel_maps.png"),
        masks=figure["masks"],
        labels=figure["labels"],
        predictions=figure["predicted"],
        class_names=SHAPE_NAMES,
        unreliable=unreliable,
        column_notes=_column_notes(m.cid, config.ru, rows, layers),
        caption=caption,
    )
    layer_unreliable = {
        f"{k} {what}": np.array([bool(np.any(v[i] != "")) for i in range(len(layers))])
        for k, v in unreliable.items()
        for what in ("mean", "concentration", "linearity")
    }
    plot_layer_curves(
        layers,
        {**tables["curves"], **tables["diag"]},
        folder.record("layer_curves.png"),
        title=f"{config.model} on the embedded data set: layer-wise discarding",
        caption=caption,
        ylabels={"linearity": "linearity (closed-form budget / beta)"},
        log_panels={"linearity"},
        reference={"linearity": 1.0},
        unreliable=layer_unreliable,
    )


def _result_row(prefix: str, res, i: int, curves: dict, at: int | None = None):
    """Summary fields of layer ``i`` of ``res`` (row ``at`` of ``curves``)."""
    label = prefix.upper()
    at = i if at is None else at
    return {
        f"{prefix}_mean": _round(res.mean[i].mean()),
        # Independent solves per image: the SE of the mean over images.
        f"{prefix}_mean_se": _round(
            np.sqrt(np.sum(np.square(res.mean_se[i]))) / res.mean_se.shape[1]
        ),
        f"{prefix}_reproducibility": _round(res.reproducibility[i].mean()),
        f"{prefix}_concentration": _round(curves[f"{label} concentration"][at].mean()),
        f"{prefix}_converged": _round(res.converged[i].mean()),
        f"{prefix}_budget_over_beta": _round(res.budget[i].mean() / res.beta),
        f"{prefix}_linearity": _round(res.linearity[i].mean()),
        f"{prefix}_mean_shift": _round(res.mean_shift[i].mean()),
        f"{prefix}_entropy_gain": _round(res.entropy_gain[i].mean()),
    }


RU_FIELDS = tuple(
    f"ru_{f}"
    for f in (
        "mean",
        "mean_se",
        "reproducibility",
        "concentration",
        "converged",
        "budget_over_beta",
        "linearity",
        "mean_shift",
        "entropy_gain",
    )
)


def _pad_layers(
    have: Sequence[str], values, layers: Sequence[str], shape: tuple[int, ...], fill
) -> np.ndarray:
    """``values`` ``(len(have), *shape)`` of the layers ``have`` spread over
    ``layers`` ``(len(layers), *shape)``, ``fill`` at the others (``values``
    may be ``None`` when ``have`` is empty)."""
    out = np.full((len(layers), *shape), fill)
    for i, name in enumerate(have):
        out[layers.index(name)] = np.asarray(values[i])
    return out


def _caption(config: DemoConfig, accuracy: float, n: int, warnings_) -> str:
    lines = [
        f"{config.model} trained {config.epochs} epochs on {config.num_train:,} "
        f"embedded images, test accuracy {accuracy:.1%}; {n} test images; "
        f"solver method {config.cid.method!r}, beta = {config.cid.beta:g} "
        "(noise budget as a share of the layer's sensitivity).",
        "CID: entropy of the input noise the layer ignores (bright = more "
        "discarded). RU: entropy of the decoder's reconstruction error "
        "(bright = less recoverable from the layer). Units: nats per pixel.",
    ]
    if config.ru:
        lines.append(
            "Grey maps with a red frame: the solve did not meet its budget, or "
            "the RU decoder does not beat the mean image by "
            f"{RECOVERY_MARGIN:.0%} (RU is then not solved unless "
            "ru_unlearned='solve': where the layer keeps no recoverable image "
            "information, RU is at its ceiling); do not read them."
        )
    else:
        lines.append("Grey maps with a red frame: the solve did not meet its budget.")
    if accuracy < ACCURACY_WARNING:
        lines.append(f"WARNING: the model is barely trained (accuracy {accuracy:.1%}).")
    return "\n".join(lines)


def _column_notes(cid, with_ru: bool, rows, layers) -> dict[str, list[str]]:
    n = cid.converged.shape[1]
    notes = {
        "CID": [
            f"lin. {rows[name]['cid_linearity']:.3g}, "
            f"{int(cid.converged[i].sum())}/{n} conv."
            for i, name in enumerate(layers)
        ]
    }
    if with_ru:
        notes["RU"] = [
            f"MSE/var {rows[name]['decoder_mse_over_variance']:.2f}, "
            + (
                f"{round(rows[name]['ru_converged'] * n)}/{n} conv."
                if rows[name]["ru_solved"]
                else "not solved"
            )
            for name in layers
        ]
    return notes


def format_summary(summary: dict, out_dir: str | os.PathLike | None = None) -> str:
    """The console report of a demo summary: a table per layer, the warnings
    and the files written.

    Args:
      summary: the dict returned by :func:`run_demo`.
      out_dir: the run folder, named in the list of files.

    Returns:
      Multi-line text.
    """
    acc = summary["test_accuracy"]
    head = (
        f"{summary['model']}: test accuracy {acc:.1%}; {summary['num_images']} "
        f"images, method {summary['method']!r}, beta {summary['beta']:g}"
    )
    cols = [
        ("cid_mean", "CID", "{:+.3f}"),
        ("cid_mean_se", "±MC", "{:.3f}"),
        ("cid_reproducibility", "repro.", "{:.2f}"),
        ("cid_concentration", "conc.", "{:+.3f}"),
        ("cid_converged", "conv.", "{:.0%}"),
        ("cid_budget_over_beta", "budget/b", "{:.2f}"),
        ("cid_linearity", "linearity", "{:.3g}"),
        ("cid_entropy_gain", "gain", "{:+.3f}"),
    ]
    rows = summary["layers"]
    if any("ru_mean" in r for r in rows.values()):
        cols += [
            ("ru_mean", "RU", "{:+.3f}"),
            ("ru_mean_se", "±MC", "{:.3f}"),
            ("ru_concentration", "conc.", "{:+.3f}"),
            ("ru_converged", "conv.", "{:.0%}"),
            ("decoder_heldout_mse", "dec. MSE", "{:.2e}"),
            ("decoder_mse_over_variance", "MSE/var", "{:.2f}"),
        ]

    def cell(value, fmt):
        return "-" if value is None else fmt.format(value)

    table = [["layer", *(c[1] for c in cols)]]
    for name, row in rows.items():
        table.append([name, *(cell(row.get(k), f) for k, _, f in cols)])
    widths = [max(len(r[j]) for r in table) for j in range(len(table[0]))]
    lines = [
        head,
        "nats per pixel; ±MC = Monte-Carlo standard error of the mean; repro. = "
        "reproducibility of the maps; conv. = share of converged solves; "
        "budget/b = measured budget / beta; see summary.json 'definitions'",
    ]
    for r in table:
        lines.append("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    for w in summary.get("warnings", []):
        lines.append(f"warning: {w}")
    where = f" in {out_dir}" if out_dir is not None else ""
    lines.append(f"files written{where}: {', '.join(summary.get('files', []))}")
    return "\n".join(lines)
