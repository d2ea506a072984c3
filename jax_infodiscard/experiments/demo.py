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

The console shows each phase with its expected time on an idle 2-core CPU,
a status line per layer, the per-layer table (:func:`format_summary`), the
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
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

import jax_infodiscard as jid
from jax_infodiscard.core.engine import resolve_strategy
from jax_infodiscard.data import SHAPE_NAMES
from jax_infodiscard.experiments.cache import (
    ModelSpec,
    decoder_cache_dir,
    model_cache_dir,
    train_or_load,
)
from jax_infodiscard.experiments.rundir import MANIFEST, RunFolder
from jax_infodiscard.models import feature_fn as make_feature_fn
from jax_infodiscard.models import model_fn
from jax_infodiscard.plotting import plot_layer_curves, plot_pixel_maps
from jax_infodiscard.training.decoder import (
    LEARNED_NOTHING,
    NO_INFORMATION,
    RECOVERY_MARGIN,
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
    "cid_concentration": "nats per pixel",
    "cid_entropy_gain": "nats per pixel",
    "ru_mean": "nats per pixel",
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

# Cost model of the phases on an idle 2-core CPU, for the expected times
# printed before each phase. Calibrated on `demo --fast` run alone on the
# project's 2-core machine (load average about 2, i.e. this job only): a first
# run (training 34 s, CID 54 s, decoders 93 s, RU 91 s) and a second one with
# the compilation cache (CID 32 s, RU 92 s), so compilation is about 5.5 s per
# CID layer and little for RU. The decoders' split into fixed cost and steps
# follows benchmarks/bench_decoders.py (fixed part 40% of a 60-step run).
_IDLE_CPU_S = {
    "train_compile": 25.0,
    "train_image_epoch": 1.15e-3,
    "cid_layer_compile": 6.0,
    # Per map, scaled by passes (x1.11 for CID, x1.16 for RU) for the solver's
    # early-window safeguard, added after the calibration.
    "cid_map": 2.2,  # optimize, 96 steps
    # RU decoders, per layer, trained together (one forward pass and one
    # compiled step for all layers).
    "decoder_compile": 9.0,
    "decoder_step": 0.23,
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
        reconstructs better than 3e-3 at the same steps (held-out MSE /
        image variance at conv1 0.08 vs 0.11 in 300 steps, 0.24 vs 0.33 in
        60; ``benchmarks/bench_decoders.py``).
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
        fields = {
            f.name: getattr(self.cid, f.name) for f in dataclasses.fields(self.cid)
        }
        return jid.RUConfig(**{**fields, "steps": self.ru_steps})

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
        """Prints ``[i/n] title, about T on 2 CPU cores``; returns the clock."""
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


def _concat(results: Sequence[Any]) -> Any:
    """One result of several layers from single-layer results."""
    first = results[0]
    arrays = {
        f.name: np.concatenate([np.asarray(getattr(r, f.name)) for r in results])
        for f in dataclasses.fields(first)
        if isinstance(getattr(first, f.name), np.ndarray)
    }
    layers = tuple(name for r in results for name in r.layers)
    return dataclasses.replace(first, layers=layers, **arrays)


def _layer_note(res, i: int) -> str:
    n = res.converged.shape[1]
    conv = int(np.sum(res.converged[i]))
    return (
        f"mean {float(res.mean[i].mean()):+.2f} nats, {conv}/{n} converged, "
        f"linearity {float(res.linearity[i].mean()):.2f}"
    )


def _solve(console: _Console, label: str, call, layers, cfg) -> Any:
    """Runs ``call(layers) -> result`` layer by layer when the solver would do
    one program per layer anyway (the same maps, a status line per layer),
    else in one call."""
    per_layer = resolve_strategy(cfg, len(layers)) == "per_layer"
    groups = [[name] for name in layers] if per_layer else [list(layers)]
    results = []
    with console.units(label, len(layers)) as finish:
        for group in groups:
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                # The demo reports convergence and linearity itself (status
                # lines, table, warnings list), once and in its own words.
                warnings.simplefilter("ignore", UserWarning)
                res = call(group)
                jax.block_until_ready(res.pixel)
            res = res.to_numpy()
            results.append(res)
            seconds = time.perf_counter() - t0
            for i, name in enumerate(res.layers):
                finish(f"{name}, {_layer_note(res, i)} ({_duration(seconds)})")
    return _concat(results)


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
    known = config.model == "convnet" and config.image_size == 32
    spec = config.model_spec()
    cached = model_cache_dir(spec, cache_dir).exists()
    t0 = console.phase(
        f"model: {'load (or finish training)' if cached else 'train'} "
        f"{config.model} on {config.num_train:,} embedded images, "
        f"{config.epochs} epochs",
        _expected_training(config, cached),
    )
    trained = train_or_load(spec, cache_dir, progress=progress)
    model, accuracy = trained.model, float(trained.accuracy)
    timings["train_s"] = console.done(t0, f"test accuracy {accuracy:.1%}")
    if accuracy < ACCURACY_WARNING:
        warnings_.append(
            f"the model is barely trained (test accuracy {accuracy:.1%} < "
            f"{ACCURACY_WARNING:.0%}): its maps describe a network that has not "
            "learned the task; train longer (more --epochs, or drop --fast)"
        )
        console.say(f"      warning: {warnings_[-1]}")
    test_set = trained.test_data

    layers = tuple(config.layers or model.default_layers)
    unknown = [n for n in layers if n not in model.layer_names]
    if unknown:
        raise ValueError(
            f"layers {unknown} are not layers of {config.model!r}; it has "
            f"{list(model.layer_names)}"
        )
    fn = make_feature_fn(model, layers)
    n = config.num_images
    images = jnp.asarray(test_set.images[:n])
    masks = np.asarray(test_set.masks[:n])
    labels = np.asarray(test_set.labels[:n])
    predicted = np.asarray(jnp.argmax(model_fn(model)(images), axis=-1))
    key = jax.random.key(config.seed)
    num_layers = len(layers)

    def expected(kind: str, maps: int) -> float | None:
        if not known:
            return None
        return (
            num_layers * _IDLE_CPU_S[f"{kind}_layer_compile"]
            + maps * (_IDLE_CPU_S[f"{kind}_map"])
        )

    t0 = console.phase(
        f"CID ({config.cid.method}): {num_layers} layers x {n} images",
        expected("cid", num_layers * n) if config.cid.method == "optimize" else None,
    )
    cid = _solve(
        console,
        "CID",
        lambda group: jid.cid(fn, images, key, layers=group, config=config.cid),
        layers,
        config.cid,
    )
    timings["cid_s"] = console.done(t0)
    folder.save_result("cid.npz", cid)
    maps = {"CID": cid.pixel}
    curves = {
        "CID mean": cid.mean,
        "CID concentration": np.asarray(jid.concentration(cid.pixel, masks)),
    }
    diag = {"CID linearity": cid.linearity}
    unreliable = {"CID": np.where(cid.converged, "", "not converged").astype(object)}
    rows = {name: _result_row("cid", cid, i, curves) for i, name in enumerate(layers)}
    for i, name in enumerate(layers):
        rows[name]["passes_per_map"] = _round(cid.passes[i].mean())

    ru = None
    if config.ru:
        ru, decoder_rows, t_dec, t_ru = _ru_phases(
            console, config, trained, fn, layers, images, key, progress
        )
        timings["decoders_s"], timings["ru_s"] = t_dec, t_ru
        if ru is not None:
            folder.save_result("ru.npz", ru)
        # Over all layers; NaN at layers whose RU was not solved.
        solved_layers = () if ru is None else ru.layers

        def over_layers(values, shape, fill=np.nan):
            return _pad_layers(solved_layers, values, layers, shape, fill)

        maps["RU"] = over_layers(None if ru is None else ru.pixel, cid.pixel.shape[1:])
        curves["RU mean"] = over_layers(None if ru is None else ru.mean, (n,))
        curves["RU concentration"] = over_layers(
            None if ru is None else jid.concentration(ru.pixel, masks), (n,)
        )
        diag["RU linearity"] = over_layers(None if ru is None else ru.linearity, (n,))
        ru_converged = over_layers(
            None if ru is None else ru.converged, (n,), fill=False
        )
        flags = np.full((num_layers, n), "", dtype=object)
        for i, name in enumerate(layers):
            rows[name].update(decoder_rows[name])
            solved = ru is not None and name in ru.layers
            rows[name]["ru_solved"] = solved
            if solved:
                j = ru.layers.index(name)
                rows[name].update(_result_row("ru", ru, j, curves, at=i))
            else:
                rows[name].update(dict.fromkeys(RU_FIELDS))
            if decoder_rows[name]["decoder_verdict"] == NO_INFORMATION:
                flags[i, :] = "no recoverable image information: RU at its ceiling"
                warnings_.append(
                    f"RU {name}: this layer keeps no recoverable image information "
                    "(neither the decoder nor its ridge readout beats the mean "
                    f"image by {RECOVERY_MARGIN:.0%}; held-out MSE / image "
                    "variance = "
                    f"{decoder_rows[name]['decoder_mse_over_variance']:.2f}): RU is "
                    "at its ceiling there, the entropy of each pixel given nothing "
                    "(0.5 log(2 pi e Var x_i))" + ("" if solved else "; not solved")
                )
            elif decoder_rows[name]["decoder_learned_nothing"]:
                flags[i, :] = (
                    "decoder learned nothing"
                    if solved
                    else "not solved: decoder learned nothing"
                )
                warnings_.append(
                    f"RU {name}: the decoder learned (almost) nothing (held-out "
                    "MSE / image variance = "
                    f"{decoder_rows[name]['decoder_mse_over_variance']:.2f}); "
                    + (
                        "its RU maps are only its error map (greyed out)"
                        if solved
                        else "RU was not solved there (ru_unlearned='skip')"
                    )
                    + ". Train the decoders longer for real analyses"
                )
            else:
                flags[i, ~ru_converged[i]] = "not converged"
        unreliable["RU"] = flags
    for label, res in (("CID", cid), ("RU", ru)):
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

    t0 = console.phase("figures and summary", 5.0)
    caption = _caption(config, accuracy, n, warnings_)
    plot_pixel_maps(
        images,
        maps,
        layers,
        folder.record("pixel_maps.png"),
        masks=masks,
        labels=labels,
        predictions=predicted,
        class_names=SHAPE_NAMES,
        unreliable=unreliable,
        column_notes=_column_notes(cid, config.ru, rows, layers),
        caption=caption,
    )
    layer_unreliable = {
        f"{k} {what}": np.array([bool(np.any(v[i] != "")) for i in range(num_layers)])
        for k, v in unreliable.items()
        for what in ("mean", "concentration", "linearity")
    }
    plot_layer_curves(
        layers,
        {**curves, **diag},
        folder.record("layer_curves.png"),
        title=f"{config.model} on the embedded data set: layer-wise discarding",
        caption=caption,
        ylabels={"linearity": "linearity (closed-form budget / beta)"},
        log_panels={"linearity"},
        reference={"linearity": 1.0},
        unreliable=layer_unreliable,
    )
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
        "layers": rows,
        "warnings": warnings_,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "devices": [str(d) for d in jax.devices()],
    }
    folder.write_json("summary.json", summary)
    timings["figures_s"] = console.done(t0)
    summary["timings_s"]["figures_s"] = round(timings["figures_s"], 1)
    return summary


def _result_row(prefix: str, res, i: int, curves: dict, at: int | None = None):
    """Summary fields of layer ``i`` of ``res`` (row ``at`` of ``curves``)."""
    label = prefix.upper()
    at = i if at is None else at
    return {
        f"{prefix}_mean": _round(res.mean[i].mean()),
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
        "concentration",
        "converged",
        "budget_over_beta",
        "linearity",
        "mean_shift",
        "entropy_gain",
    )
)


def _ru_phases(console, config, trained, fn, layers, images, key, progress):
    """Decoders (trained or loaded) and RU; returns the result, the decoder rows
    and the two phases' seconds."""
    from jax_infodiscard.models.decoder import decoder_fn
    from jax_infodiscard.training.decoder import (
        DecoderConfig,
        decoder_checkpoint_path,
        load_or_train_decoders,
    )

    dec_cfg = DecoderConfig(
        steps=config.decoder_steps,
        width=config.decoder_width,
        batch_size=config.decoder_batch_size,
        learning_rate=config.decoder_learning_rate,
        beta=config.cid.beta,
    )
    dec_images = trained.train_data.images[
        : min(config.decoder_images, config.num_train)
    ]
    dec_dir = decoder_cache_dir(trained.path, num_images=len(dec_images))
    missing = [
        name for name in layers if not decoder_checkpoint_path(dec_dir, name).exists()
    ]
    known = config.model == "convnet" and config.image_size == 32
    expected = None
    if known:
        expected = 2.0 + len(missing) * (
            _IDLE_CPU_S["decoder_compile"]
            + config.decoder_steps * _IDLE_CPU_S["decoder_step"]
        )
    t0 = console.phase(
        f"RU decoders: {len(layers)} layers trained together, "
        f"{config.decoder_steps} steps of {config.decoder_batch_size} images"
        + (
            f" ({len(layers) - len(missing)} cached)"
            if len(missing) < len(layers)
            else ""
        ),
        expected,
    )
    # The missing decoders are trained together: one forward pass of the
    # network and one compiled step per batch for all of them.
    decs, all_metrics = load_or_train_decoders(
        fn,
        layers,
        dec_images,
        dec_cfg,
        key=jax.random.fold_in(key, 100),
        checkpoint_dir=dec_dir,
        progress=progress and console.verbose,
    )
    decoders, rows = {}, {}
    for name in layers:
        metrics = all_metrics[name]
        decoders[name] = decoder_fn(decs[name])
        mse, ratio = metrics.eval_mse, metrics.mse_over_variance
        rows[name] = {
            "decoder_heldout_mse": _round(mse),
            "decoder_mse_over_variance": _round(ratio),
            "decoder_learned_nothing": metrics.learned_nothing,
            "decoder_verdict": metrics.verdict,
            "decoder_steps": metrics.steps,
        }
        console.say(
            f"      decoder {name}: held-out MSE {mse:.2e} = {ratio:.2f} x the "
            f"image variance ({metrics.verdict})"
        )
    t_dec = console.done(t0)

    ru_cfg = config.ru_config()
    solved = [
        name
        for name in layers
        if config.ru_unlearned == "solve" or not rows[name]["decoder_learned_nothing"]
    ]
    skipped = [name for name in layers if name not in solved]
    t0 = console.phase(
        f"RU ({ru_cfg.method}, {ru_cfg.steps} steps): {len(solved)} layers x "
        f"{images.shape[0]} images"
        + (
            f" (skipped, decoder learned nothing: {', '.join(skipped)})"
            if skipped
            else ""
        ),
        None
        if not known
        else len(solved) * _IDLE_CPU_S["ru_layer_compile"]
        + len(solved) * images.shape[0] * _IDLE_CPU_S["ru_map"],
    )
    ru = None
    if solved:
        ru = _solve(
            console,
            "RU",
            lambda group: jid.ru(
                fn,
                {g: decoders[g] for g in group},
                images,
                key,
                layers=group,
                config=ru_cfg,
            ),
            solved,
            ru_cfg,
        )
    t_ru = console.done(t0)
    return ru, rows, t_dec, t_ru


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
        "nats per pixel; conv. = share of converged solves; "
        "budget/b = measured budget / beta; see summary.json 'definitions'",
    ]
    for r in table:
        lines.append("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    for w in summary.get("warnings", []):
        lines.append(f"warning: {w}")
    where = f" in {out_dir}" if out_dir is not None else ""
    lines.append(f"files written{where}: {', '.join(summary.get('files', []))}")
    return "\n".join(lines)
