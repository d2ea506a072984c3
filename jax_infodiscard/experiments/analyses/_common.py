"""What the analyses share: sizes, training, CID/RU/concentration, verdicts, figures.

Every analysis follows the same steps: train (or load from the shared cache)
the networks it compares, measure CID (and RU, concentration) layer by layer
on the same test images, compare the networks image by image (paired
differences), state a verdict per claim, and draw the curves and their
differences. This module holds those steps; each analysis module holds only
its own design and claims.

Solver settings per scale: ``toy`` and ``fast`` shrink the solver (fewer
iterations and probes, and one vectorised program for all layers, which
compiles once instead of once per layer); ``full`` runs ``steps=48`` (the
preamble's knob for sweeps) and otherwise the default
:class:`~jax_infodiscard.config.CIDConfig`. A setting the user changed
(``--beta``, ``--method``) is never overridden.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from jax_infodiscard.config import CIDConfig, RUConfig
from jax_infodiscard.data import TFDS_SPECS
from jax_infodiscard.experiments import measure as room
from jax_infodiscard.experiments.analyses import (
    AnalysisOptions,
    Verdict,
)
from jax_infodiscard.experiments.analyses import verdicts as V
from jax_infodiscard.experiments.cache import (
    ModelSpec,
    TrainedModel,
    decoder_cache_dir,
    train_or_load,
)
from jax_infodiscard.experiments.data import (
    Examples,
    dataset_has_masks,
    load_examples,
)
from jax_infodiscard.experiments.rundir import RunFolder
from jax_infodiscard.models import feature_fn
from jax_infodiscard.training.decoder import LEARNED_NOTHING
from jax_infodiscard.training.train import TrainConfig

__all__ = [
    "Measured",
    "Timer",
    "all_of",
    "analysed_images",
    "cid_config",
    "combine_seeds",
    "crop_scale",
    "curve_panels",
    "decoder_config",
    "delta_verdict",
    "diagnostics_table",
    "difference_panels",
    "finish",
    "fmt",
    "linearity_text",
    "load_test",
    "masks_of",
    "mc_errors",
    "measure",
    "measure_trained",
    "no_change_verdict",
    "plot_curves",
    "pooled",
    "ru_config",
    "seeds_of",
    "setting_text",
    "spearman",
    "train_and_measure",
    "train_model",
    "verdict",
]

# Solver settings per scale (applied only where the user kept the default).
_SOLVER = {
    "toy": {
        "steps": 2,
        "samples": 2,
        "probes": 16,
        "budget_samples": 4,
        "step_chunk": 1,
        "layer_strategy": "vmap",
    },
    "fast": {
        "steps": 24,
        "probes": 64,
        "budget_samples": 16,
        "layer_strategy": "vmap",
    },
    "full": {"steps": 48},
}

# RU decoders per scale (small, a decoder step is costly on a CPU). A peak
# learning rate of 1e-2 reconstructs better than 3e-3 at equal steps, and at
# 300 steps batch 16 better than batch 32 in less time per step
# (benchmarks/bench_decoders.py on the demo convnet; numbers in docs/ru.md).
_DECODER = {
    "toy": {"steps": 4, "width": 8, "num_blocks": 1, "batch_size": 8, "eval_images": 8},
    "fast": {
        "steps": 60,
        "width": 8,
        "num_blocks": 2,
        "learning_rate": 1e-2,
        "eval_images": 128,
    },
    "full": {
        "steps": 300,
        "width": 16,
        "num_blocks": 3,
        "batch_size": 16,
        "learning_rate": 1e-2,
        "eval_images": 256,
    },
}


def cid_config(options: AnalysisOptions) -> CIDConfig:
    """The solver configuration of ``options.scale`` (user settings kept)."""
    default = CIDConfig()
    changes = {
        k: v
        for k, v in _SOLVER[options.scale].items()
        if getattr(options.cid, k) == getattr(default, k)
    }
    return options.cid.replace(**changes)


def ru_config(options: AnalysisOptions) -> RUConfig:
    """The RU solver configuration: the CID one's fields, as an RUConfig."""
    return RUConfig.from_cid(cid_config(options))


def decoder_config(options: AnalysisOptions):
    """The RU decoders' configuration of ``options.scale``."""
    from jax_infodiscard.training.decoder import DecoderConfig

    return DecoderConfig(beta=options.cid.beta, **_DECODER[options.scale])


def crop_scale(dataset: str) -> float | None:
    """1.5 (the paper's crop around the object box) for tfds sets with boxes."""
    if dataset == "synthetic":
        return None
    return 1.5 if TFDS_SPECS[dataset].box_key is not None else None


class Timer:
    """Wall time of named phases, in seconds (for ``results.json``).

    With ``status``, each finished phase also prints one line (what the
    command line shows, bars or not, so that a log says what the run is doing):

    >>> timer = Timer(status=True)
    >>> timer.lap("cid_s", time.perf_counter())  # doctest: +ELLIPSIS
      done: cid in 0 s (run ... s)
    """

    def __init__(self, status: bool = False):
        self.seconds: dict[str, float] = {}
        self.status = status
        self._start = time.perf_counter()

    def lap(self, name: str, since: float) -> None:
        seconds = time.perf_counter() - since
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        if self.status:
            phase = name.removesuffix("_s").replace("_", " ")
            print(
                f"  done: {phase} in {seconds:.0f} s (run {self.total():.0f} s)",
                flush=True,
            )

    def total(self) -> float:
        return time.perf_counter() - self._start


def train_model(
    options: AnalysisOptions,
    model: str,
    *,
    num_train: int,
    epochs: int,
    seed: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    train: Mapping[str, Any] | None = None,
    variant: Sequence[tuple[str, Any]] = (),
    test_data: Examples | None = None,
    **hooks: Any,
) -> TrainedModel:
    """Trains (or loads from the cache) one network of an analysis.

    Args:
      options: the analysis options (data set, image size, cache).
      model: zoo name.
      num_train: training images.
      epochs: training epochs.
      seed: training seed (default ``options.seed``).
      model_kwargs: architecture options (``width``...).
      train: other :class:`TrainConfig` fields.
      variant: description of the hooks (see ``ModelSpec.variant``).
      test_data: the test examples (default: 500 of the test split).
      **hooks: ``init_model``, ``loss``, ``batch_transform``,
        ``extra_transform`` of :func:`train_or_load`.
    """
    spec = ModelSpec(
        model=model,
        dataset=options.dataset,
        image_size=options.image_size,
        num_train=num_train,
        num_test=500 if test_data is None else len(test_data.images),
        crop_scale=crop_scale(options.dataset),
        train=TrainConfig(
            epochs=epochs,
            seed=options.seed if seed is None else seed,
            **dict(train or {}),
        ),
        model_kwargs=tuple(sorted((model_kwargs or {}).items())),
        variant=tuple(variant),
    )
    return train_or_load(
        spec,
        options.cache_dir,
        progress=options.progress,
        test_data=test_data,
        **hooks,
    )


def load_test(options: AnalysisOptions, num: int) -> Examples:
    """The first ``num`` test examples (analysed images come first)."""
    return load_examples(
        options.dataset,
        "test",
        num,
        image_size=options.image_size,
        crop_scale=crop_scale(options.dataset),
    )


@dataclasses.dataclass
class Measured:
    """CID (and RU, concentration) of one network on the analysed images.

    Attributes:
      name: label of the network (``"resnet20"``, ``"pruned 62%"``...).
      layers: the ``L`` analysed layers.
      cid: the :class:`~jax_infodiscard.CIDResult` (NumPy arrays).
      concentration: CID concentration ``(L, B)`` (NaN where the image has
        no two-sided mask), or ``None`` without masks.
      ru: the :class:`~jax_infodiscard.RUResult`, or ``None``.
      ru_concentration: RU concentration ``(L, B)`` or ``None``.
      info: JSON-able facts (accuracy, decoder MSEs, ...).
    """

    name: str
    layers: tuple[str, ...]
    cid: Any
    concentration: np.ndarray | None = None
    ru: Any = None
    ru_concentration: np.ndarray | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    ru_layers: tuple[str, ...] = ()

    def values(self, quantity: str) -> np.ndarray | None:
        """``(L, B)`` values of ``"cid"``, ``"ru"``, ``"concentration"``,
        ``"ru_concentration"`` (None when not measured).

        RU is measured on the convolutional layers only (``ru_layers``); its
        rows of the other layers are NaN.
        """
        if quantity == "cid":
            return np.asarray(self.cid.mean)
        if quantity == "concentration":
            return self.concentration
        if self.ru is None:
            return None
        v = self.ru.mean if quantity == "ru" else self.ru_concentration
        if v is None:
            return None
        out = np.full((len(self.layers), v.shape[1]), np.nan, np.float32)
        for j, layer in enumerate(self.ru_layers):
            out[self.layers.index(layer)] = v[j]
        return out

    def at(self, quantity: str, layer: str) -> np.ndarray:
        """``(B,)`` values of one layer."""
        return self.values(quantity)[self.layers.index(layer)]

    def summary(self) -> dict[str, Any]:
        """Per-layer means, spreads and regime diagnostics (JSON-able)."""
        out: dict[str, Any] = {"info": self.info, "layers": {}}
        for i, layer in enumerate(self.layers):
            row: dict[str, Any] = {}
            for q in ("cid", "ru", "concentration", "ru_concentration"):
                v = self.values(q)
                if v is None:
                    continue
                m, s, sd = _mean_sem_sd(v[i])
                row[q] = {"mean": m, "sem": s, "sd": sd}
            for d in ("linearity", "entropy_gain", "mean_shift"):
                row[d] = float(np.mean(getattr(self.cid, d)[i]))
            row["converged"] = float(np.mean(self.cid.converged[i]))
            row["capped"] = float(np.mean(self.cid.capped[i]))
            out["layers"][layer] = row
        return out


def _mean_sem_sd(v: np.ndarray) -> tuple[float, float, float]:
    """Mean, standard error and standard deviation of the finite values
    (NaN where there are too few; no numpy warning)."""
    v = np.asarray(v, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan, math.nan
    sem = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan
    return float(v.mean()), sem, float(v.std())


def _mean_sem(v: np.ndarray) -> tuple[float, float]:
    return _mean_sem_sd(v)[:2]


def measure(
    name: str,
    model: Any,
    layers: Sequence[str],
    images: np.ndarray,
    masks: np.ndarray | None,
    options: AnalysisOptions,
    *,
    key: jax.Array,
    ru_images: np.ndarray | None = None,
    decoder_dir: Any = None,
    timer: Timer | None = None,
    info: Mapping[str, Any] | None = None,
) -> Measured:
    """CID, concentration and (with ``ru_images``) RU of ``model``'s layers.

    Args:
      name: label of the network.
      model: a zoo model.
      layers: its layers to analyse.
      images: float32 ``(B, S, S, 3)`` analysed images.
      masks: bool ``(B, S, S)`` foreground masks, or None.
      options: the analysis options (solver settings per scale).
      key: solver key; the same key for every network makes the comparison
        paired in the noise draws too.
      ru_images: training images of the RU decoders (None: no RU).
      decoder_dir: the decoders' cache folder (required with ``ru_images``).
      timer: adds ``cid_s``/``decoders_s``/``ru_s``.
      info: JSON-able facts recorded with the result.
    """
    layers = tuple(layers)
    fn = feature_fn(model, layers)
    x = jnp.asarray(images)
    # RU of the convolutional layers (the paper's); the measuring room gives a
    # decoder at least the blocks it needs to upsample its feature to the
    # image, trains layers of the same depth together, and solves RU only
    # where the decoder learned something: elsewhere its maps would be the
    # decoder's own error, and differences between networks there would read
    # as "RU unchanged". Those layers' RU stays NaN (not measured).
    shapes = jax.eval_shape(fn, jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype))
    m = room.measure(
        fn,
        x,
        key,
        layers=layers,
        cid_config=cid_config(options),
        masks=masks,
        ru_config=ru_config(options),
        decoder_images=None if ru_images is None else np.asarray(ru_images),
        decoder_config=decoder_config(options),
        decoder_folder=decoder_dir,
        ru_layers=tuple(n for n in layers if len(shapes[n].shape) == 4),
        progress=options.progress,
    )
    if timer:
        for phase, seconds in m.seconds.items():
            timer.lap(phase, time.perf_counter() - seconds)
    out = Measured(name, layers, m.cid, m.concentration)
    out.info.update(dict(info or {}))
    if ru_images is None:
        return out
    metrics = {} if m.decoders is None else m.decoders.metrics
    out.info["decoder_mse"] = {n: float(v.eval_mse) for n, v in metrics.items()}
    out.info["decoder_mse_over_variance"] = {
        n: round(v.mse_over_variance, 4) for n, v in metrics.items()
    }
    out.info["ru_not_solved"] = [n for n in metrics if n not in m.ru_layers]
    if m.ru is not None:
        out.ru, out.ru_layers = m.ru, m.ru_layers
        out.ru_concentration = m.ru_concentration
    return out


def decoder_dir(trained: TrainedModel, num_images: int, options: AnalysisOptions):
    """The RU decoders' cache folder of a cached model."""
    return decoder_cache_dir(trained.path, num_images=num_images, scale=options.scale)


def masks_of(options: AnalysisOptions, test: Examples, num: int) -> np.ndarray | None:
    """The masks of the first ``num`` test examples, or None (no annotations)."""
    if not dataset_has_masks(options.dataset) or test.masks is None:
        return None
    return np.asarray(test.masks[:num])


# ------------------------------------------------------------------ verdicts
def fmt(mean: float, sem: float, digits: int = 3) -> str:
    """``+0.012 ± 0.004`` (mean ± one standard error)."""
    if not np.isfinite(sem):
        return f"{mean:+.{digits}f}"
    return f"{mean:+.{digits}f} ± {sem:.{digits}f}"


def mc_errors(m: Measured, quantity: str) -> np.ndarray | None:
    """Monte-Carlo standard errors ``(L, B)`` of ``m.values(quantity)``.

    Read from the result's ``mean_se`` where it carries one (CID and RU;
    NaN rows where RU was not solved), else None: not known (older
    results, concentration).
    """
    if quantity == "cid":
        se = getattr(m.cid, "mean_se", None)
        return None if se is None else np.asarray(se, float)
    if quantity != "ru" or m.ru is None:
        return None
    se = getattr(m.ru, "mean_se", None)
    if se is None:
        return None
    out = np.full((len(m.layers), np.shape(se)[1]), np.nan)
    for j, layer in enumerate(m.ru_layers):
        out[m.layers.index(layer)] = np.asarray(se)[j]
    return out


def seeds_of(ms: Sequence[Measured]) -> list[int]:
    """The training seeds of a network's measurements (``info["seed"]``;
    their positions where not recorded)."""
    return [int(m.info.get("seed", i)) for i, m in enumerate(ms)]


def combine_seeds(
    per_seed: Sequence[np.ndarray],
    *,
    expect: str,
    seeds: Sequence[int] | None = None,
    mc: Sequence[np.ndarray | None] | None = None,
) -> V.Replicated:
    """Two-level verdict over training seeds of per-image paired differences.

    Rule: :func:`~jax_infodiscard.experiments.analyses.verdicts.replicated`
    (the seeds' mean beyond 2 standard errors over seeds, with the
    per-image errors and the MC error of the solve folded in, and every
    seed on the expected side).

    Args:
      per_seed: per seed, the per-image differences ``(B,)``.
      expect: ``"positive"`` or ``"negative"``.
      seeds: the training seeds (default ``0, 1, ...``).
      mc: per seed, the per-image MC standard errors ``(B,)`` or None.
    """
    seeds = list(range(len(per_seed))) if seeds is None else list(seeds)
    mc = [None] * len(per_seed) if mc is None else list(mc)
    return V.replicated(
        [
            V.seed_figure(s, d, expect=expect, mc_errors=e)
            for s, d, e in zip(seeds, per_seed, mc, strict=True)
        ],
        expect=expect,
    )


all_of = V.all_of


def pooled(m: Measured, quantity: str, layers: Sequence[str] | None = None):
    """Per-image mean of ``quantity`` over ``layers`` (default all): ``(B,)``."""
    v = m.values(quantity)
    idx = [m.layers.index(x) for x in (layers or m.layers)]
    return np.nanmean(v[idx], axis=0)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (ties: average ranks); NaN if undefined."""

    def ranks(v):
        v = np.asarray(v, float)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for val in np.unique(v):  # average ties
            r[v == val] = r[v == val].mean()
        return r

    if len(x) < 2:
        return math.nan
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def verdict(
    claim: str,
    figure: str,
    measured: str,
    outcome: str,
    rule: str,
    alone: str = "",
    first_seed: int | None = None,
):
    """A :class:`Verdict` (shorthand)."""
    return Verdict(claim, figure, measured, outcome, rule, alone, first_seed)


SEED_RULE = (
    "over seeds: the mean of the seed means beyond 2 SE over seeds (the "
    "spread of the seed means, at least the per-image SE, MC error of the "
    "solve folded in) and every seed on that side; held if for every compared "
    "network; one seed: inconclusive"
)


# --------------------------------------------------------------- reporting
def diagnostics_table(
    measured: Sequence[Measured], labels: Sequence[str] | None = None
) -> str:
    """Markdown table: per network and layer, CID, concentration, RU, regime.

    ``linearity`` is the true budget of the closed-form sigma over ``beta``
    (1: the layer is linear over the noise); ``entropy gain`` is the
    solution's mean CID minus the closed form's (nats): large values mean
    the linear picture is far off and results may contradict the paper's,
    which came from a gradient-based solver. ``labels`` name the rows'
    networks (default: their names, e.g. with the seed added); the first row
    of a network gives its test accuracy (``info["test_accuracy"]``) where
    known; RU reads "not solved" where the layer's decoder learned nothing.
    """
    labels = [m.name for m in measured] if labels is None else list(labels)
    lines = [
        "| network | test accuracy | layer | CID (nats) | concentration | RU (nats) "
        "| linearity | entropy gain | converged |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, m in zip(labels, measured, strict=True):
        not_solved = set(m.info.get("ru_not_solved", ()))
        accuracy = m.info.get("test_accuracy")
        for i, layer in enumerate(m.layers):
            known = i == 0 and accuracy is not None and np.isfinite(accuracy)
            cells = [label, f"{accuracy:.1%}" if known else "", layer]
            for q in ("cid", "concentration", "ru"):
                v = m.values(q)
                if q == "ru" and layer in not_solved:
                    cells.append("not solved (decoder learned nothing)")
                elif v is None or not np.isfinite(v[i]).any():
                    cells.append("")
                else:
                    cells.append(fmt(*_mean_sem(v[i])))
            cells.append(f"{float(np.mean(m.cid.linearity[i])):.2f}")
            cells.append(f"{float(np.mean(m.cid.entropy_gain[i])):+.3f}")
            cells.append(f"{float(np.mean(m.cid.converged[i])):.0%}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def setting_text(
    options: AnalysisOptions, *, images: int, seeds: Sequence[int], extra: str = ""
) -> str:
    """One paragraph on the setting: scale, data, images, seeds, solver."""
    cfg = cid_config(options)
    return (
        f"Scale `{options.scale}`, data set `{options.dataset}` at "
        f"{options.image_size} px; {images} test images analysed; training "
        f"seeds {list(seeds)}. Solver: method `{cfg.method}`, beta = {cfg.beta:g}, "
        f"steps = {cfg.steps}, probes = {cfg.probes}, layer strategy "
        f"`{cfg.layer_strategy}`. {extra}".strip()
    )


# ------------------------------------------------------------------ figures
def _axis(ax, layers: Sequence[str], same: bool):
    if same:
        ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=7)
    else:
        ax.set_xlabel("relative depth (layer index / last index)")


def plot_curves(
    folder: RunFolder,
    name: str,
    panels: Mapping[str, Mapping[str, tuple[Sequence[str], np.ndarray]]],
    *,
    title: str = "",
    ylabels: Mapping[str, str] | None = None,
    zero_line: Sequence[str] = (),
) -> None:
    """Layer-wise curves, one panel per quantity, one line per network.

    Args:
      folder: the run folder (the figure is written atomically).
      name: file name (``.png``).
      panels: ``{panel title: {line label: (layers, values (L, B))}}``; the
        mean over images is drawn with a band of one standard error. Lines
        of a panel with different layer lists are drawn against relative
        depth.
      title: figure title.
      ylabels: y-axis label per panel (default ``"nats"``).
      zero_line: panels that get a horizontal line at 0 (differences).
    """
    panels = {k: v for k, v in panels.items() if v}
    fig = Figure(figsize=(4.3 * len(panels), 3.4))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (panel, lines) in zip(axes, panels.items(), strict=True):
        layer_lists = {tuple(layers) for layers, _ in lines.values()}
        same = len(layer_lists) == 1
        for label, (layers, values) in lines.items():
            v = np.asarray(values, float)
            with warnings.catch_warnings():  # all-NaN layers: RU not solved
                warnings.simplefilter("ignore", RuntimeWarning)
                mu = np.nanmean(v, axis=1)
                n = np.maximum(np.sum(np.isfinite(v), axis=1), 1)
                ddof = 1 if v.shape[1] > 1 else 0
                se = np.nanstd(v, axis=1, ddof=ddof) / np.sqrt(n)
            x = (
                np.arange(len(layers))
                if same
                else np.arange(len(layers)) / max(len(layers) - 1, 1)
            )
            ax.plot(x, mu, marker="o", ms=3, label=label)
            ax.fill_between(x, mu - se, mu + se, alpha=0.2)
        if panel in zero_line:
            ax.axhline(0.0, color="k", lw=0.8)
        _axis(ax, next(iter(layer_lists)), same)
        ax.set_title(panel, fontsize=9)
        ax.set_ylabel((ylabels or {}).get(panel, "nats"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    folder.write_figure(name, fig, dpi=110, bbox_inches="tight")


def difference_panels(
    base: Measured,
    others: Sequence[Measured],
    quantities: Sequence[str] = ("cid", "concentration", "ru"),
    labels: Mapping[str, str] | None = None,
) -> dict[str, dict[str, tuple[Sequence[str], np.ndarray]]]:
    """Panels of per-image differences ``other - base`` on shared layers."""
    names = {"cid": "ΔCID", "concentration": "Δconcentration", "ru": "ΔRU"}
    names.update(labels or {})
    panels: dict[str, dict] = {}
    for q in quantities:
        lines = {}
        for m in others:
            if m.values(q) is None or base.values(q) is None:
                continue
            shared = [x for x in m.layers if x in base.layers]
            diff = np.stack([m.at(q, x) - base.at(q, x) for x in shared])
            lines[m.name] = (shared, diff)
        if lines:
            panels[names[q]] = lines
    return panels


def curve_panels(
    measured: Sequence[Measured],
    quantities: Sequence[str] = ("cid", "concentration", "ru"),
) -> dict[str, dict[str, tuple[Sequence[str], np.ndarray]]]:
    """Panels of the layer-wise curves of several networks."""
    names = {
        "cid": "CID (mean per pixel)",
        "concentration": "CID concentration",
        "ru": "RU (mean per pixel)",
    }
    panels: dict[str, dict] = {}
    for q in quantities:
        lines = {
            m.name: (m.layers, m.values(q)) for m in measured if m.values(q) is not None
        }
        if lines:
            panels[names[q]] = lines
    return panels


# ------------------------------------------------- comparisons of networks
def measure_trained(
    name: str,
    trained: TrainedModel,
    layers: Sequence[str],
    images: np.ndarray,
    masks: np.ndarray | None,
    options: AnalysisOptions,
    *,
    key: jax.Array,
    timer: Timer | None = None,
    info: Mapping[str, Any] | None = None,
    ru_train: int = 0,
) -> Measured:
    """:func:`measure` of a cached model, recording its test accuracy.

    With ``ru_train > 0``, RU too, with decoders trained on that many of the
    model's training images (cached next to the model).
    """
    return measure(
        name,
        trained.model,
        layers,
        images,
        masks,
        options,
        key=key,
        timer=timer,
        ru_images=trained.train_data.images[:ru_train] if ru_train else None,
        decoder_dir=decoder_dir(trained, ru_train, options) if ru_train else None,
        info={
            "test_accuracy": trained.accuracy,
            "test_loss": (trained.history.get("test_loss") or [None])[-1],
            **dict(info or {}),
        },
    )


def _layer_mean(values: list[np.ndarray]) -> np.ndarray:
    with warnings.catch_warnings():  # all-NaN layers (RU not solved)
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=0)


def paired_over_seeds(
    base: Sequence[Measured],
    other: Sequence[Measured],
    quantity: str,
    layers: Sequence[str],
) -> tuple[list[np.ndarray], list[np.ndarray | None]] | None:
    """Per seed, the per-image ``other - base`` averaged over ``layers``
    ``(B,)``, and its MC standard error ``(B,)`` (None where not known).

    The MC errors of the two networks are added in quadrature per layer and
    layer (conservative: the same noise key makes them correlate), and the
    layer mean's error is ``sqrt(sum se^2) / L``. None when ``quantity``
    was not measured.
    """
    diffs, errors = [], []
    for b, o in zip(base, other, strict=True):
        if b.values(quantity) is None or o.values(quantity) is None:
            return None
        shared = [x for x in layers if x in b.layers and x in o.layers]
        diffs.append(
            _layer_mean([o.at(quantity, x) - b.at(quantity, x) for x in shared])
        )
        eb, eo = mc_errors(b, quantity), mc_errors(o, quantity)
        if eb is None or eo is None or not shared:
            errors.append(None)
            continue
        var = [eb[b.layers.index(x)] ** 2 + eo[o.layers.index(x)] ** 2 for x in shared]
        errors.append(np.sqrt(np.nansum(var, axis=0)) / len(shared))
    return diffs, errors


def delta_verdict(
    groups: Mapping[str, Sequence[Measured]],
    reference: str,
    quantity: str,
    layers: Sequence[str],
    *,
    expect: str,
    claim: str,
    figure: str,
    others: Sequence[str] | None = None,
) -> tuple[Verdict | None, dict[str, Any]]:
    """Verdict on "``others`` minus ``reference`` has the sign ``expect``".

    ``groups`` maps a network's name to its :class:`Measured` per training
    seed (the same seeds in every group, recorded in ``info["seed"]``). Per
    other network and seed, the per-image difference is averaged over
    ``layers``; the outcome of each other network is :func:`combine_seeds`'s
    two-level rule over seeds, and the claim's is :func:`all_of` them. The
    verdict also records what the first seed alone said (per-image rule).
    ``None`` when ``quantity`` was not measured.
    """
    results: dict[str, V.Replicated] = {}
    seeds = seeds_of(groups[reference])
    for name in others or [n for n in groups if n != reference]:
        paired = paired_over_seeds(groups[reference], groups[name], quantity, layers)
        if paired is None:
            continue
        results[name] = combine_seeds(
            paired[0], expect=expect, seeds=seeds, mc=paired[1]
        )
    numbers = {name: {"layers": list(layers), **r.row()} for name, r in results.items()}
    unmeasured = not results or all(f.n == 0 for r in results.values() for f in r.seeds)
    unlearned = sorted(
        {
            x
            for ms in groups.values()
            for m in ms
            for x in m.info.get("ru_not_solved", ())
            if x in layers
        }
    )
    if quantity.startswith("ru") and unlearned and unmeasured:
        return verdict(
            claim,
            figure,
            "RU not measured: the RU decoders learned nothing (held-out MSE "
            f">= {LEARNED_NOTHING} x the image variance) at {', '.join(unlearned)}",
            "inconclusive",
            "RU is solved only where the decoder learned something",
        ), numbers
    if not results:
        return None, numbers
    where = ", ".join(layers) if len(layers) <= 3 else f"{len(layers)} layers"
    rule = (
        f"per-image difference of {quantity} (mean over {where}), "
        f"{'>' if expect == 'positive' else '<'} 0; {SEED_RULE}"
    )
    used = [groups[reference], *(groups[n] for n in results)]
    texts = [f"{name} − {reference}: {r.text()}" for name, r in results.items()]
    measured = "; ".join(texts) + f"; {linearity_text(used, layers)}"
    return verdict(
        claim,
        figure,
        measured,
        all_of([r.outcome for r in results.values()]),
        rule,
        all_of([r.alone for r in results.values()]),
        seeds[0],
    ), numbers


def linearity_text(
    measured: Sequence[Sequence[Measured]], layers: Sequence[str]
) -> str:
    """``"solver linearity 0.82–1.07"``: the range of the per-layer mean
    ``linearity`` over the networks and ``layers`` (1: the layer is linear
    over the noise; far from 1, the closed form is off)."""
    values = [
        float(np.mean(m.cid.linearity[m.layers.index(x)]))
        for ms in measured
        for m in ms
        for x in layers
        if x in m.layers
    ]
    if not values:
        return "solver linearity n/a"
    return f"solver linearity {min(values):.2f}–{max(values):.2f}"


def finish(
    folder: RunFolder,
    options: AnalysisOptions,
    groups: Mapping[str, Sequence[Measured]],
    reference: str,
    verdicts: Sequence[Verdict | None],
    numbers: Mapping[str, Any],
    *,
    design: Any,
    timer: Timer,
    title: str,
    images: int,
    seeds: Sequence[int],
    extra: str = "",
    results: Mapping[str, Any] | None = None,
) -> Any:
    """Figures, ``results`` and notes of an analysis comparing networks.

    Draws ``curves.png`` (layer-wise CID, concentration, RU of every network
    of the first seed) and ``differences.png`` (per-image differences from
    ``reference``), and returns the :class:`AnalysisResult`.
    """
    from jax_infodiscard.experiments.analyses import AnalysisResult

    first = [ms[0] for ms in groups.values()]
    plot_curves(folder, "curves.png", curve_panels(first), title=title)
    diff = difference_panels(
        groups[reference][0], [m for m in first if m.name != reference]
    )
    plot_curves(
        folder,
        "differences.png",
        diff,
        title=f"Differences from {reference} (paired over images; seed {seeds[0]})",
        zero_line=list(diff),
    )
    measured = [m for ms in groups.values() for m in ms]
    labels = [
        m.name if len(seeds) == 1 else f"{m.name} (seed {s})"
        for ms in groups.values()
        for s, m in zip(seeds, ms, strict=True)
    ]
    out = {
        "design": dataclasses.asdict(design)
        if dataclasses.is_dataclass(design)
        else design,
        "reference": reference,
        "networks": {
            label: m.summary() for label, m in zip(labels, measured, strict=True)
        },
        "comparisons": dict(numbers),
        **dict(results or {}),
        "seconds": {**timer.seconds, "total_s": timer.total()},
    }
    notes = "\n\n".join(
        [
            setting_text(options, images=images, seeds=seeds, extra=extra),
            "![curves](curves.png)\n\n![differences](differences.png)",
            "Regime diagnostics per network and layer:\n\n"
            + diagnostics_table(measured, labels),
        ]
    )
    return AnalysisResult(
        results=out,
        verdicts=tuple(v for v in verdicts if v is not None),
        notes=notes,
    )


def train_and_measure(
    options: AnalysisOptions,
    variants: Mapping[str, Any],
    *,
    seeds: Sequence[int],
    test: Examples,
    images: np.ndarray,
    masks: np.ndarray | None,
    key: jax.Array,
    timer: Timer,
    ru_train: int = 0,
    layers: Sequence[str] | None = None,
    **common: Any,
) -> tuple[dict[str, list[Measured]], dict[str, list[TrainedModel]]]:
    """Trains (or loads) and measures every network of every seed.

    Args:
      options: the analysis options.
      variants: ``{name: kwargs}`` of :func:`train_model` per network, in
        order; ``kwargs`` may be a callable ``(seed, trained) -> kwargs``
        where ``trained`` maps the names before it to their
        :class:`TrainedModel` of this seed (a pruned net built from the
        original, a student from its teacher).
      seeds: training seeds.
      test, images, masks: the test examples, analysed images and masks.
      key: solver key (the same for every network: paired noise).
      timer: gets ``train_s`` and the measuring phases.
      ru_train: RU decoders' training images (0: no RU).
      layers: analysed layers (default: each model's ``default_layers``).
      **common: :func:`train_model` arguments shared by every network.

    Returns:
      ``(groups, models)``: per name, the :class:`Measured` and the
      :class:`TrainedModel` of each seed.
    """
    groups = {n: [] for n in variants}
    models = {n: [] for n in variants}
    for seed in seeds:
        trained: dict[str, TrainedModel] = {}
        for name, kwargs in variants.items():
            if callable(kwargs):
                kwargs = kwargs(seed, trained)
            start = time.perf_counter()
            trained[name] = train_model(
                options, seed=seed, test_data=test, **{**common, **kwargs}
            )
            timer.lap("train_s", start)
            model = trained[name].model
            models[name].append(trained[name])
            groups[name].append(
                measure_trained(
                    name,
                    trained[name],
                    tuple(layers or model.default_layers),
                    images,
                    masks,
                    options,
                    key=key,
                    timer=timer,
                    info={"seed": seed},
                    ru_train=ru_train,
                )
            )
    return groups, models


def analysed_images(options: AnalysisOptions, num: int):
    """``(test examples, analysed images (num, S, S, 3), masks or None)``."""
    test = load_test(options, max(num, 500))
    return test, np.asarray(test.images[:num]), masks_of(options, test, num)


def no_change_verdict(
    groups: Mapping[str, Sequence[Measured]],
    reference: str,
    quantity: str,
    layers: Sequence[str],
    *,
    claim: str,
    figure: str,
) -> tuple[Verdict | None, dict[str, Any]]:
    """Verdict on "the others do not differ significantly from ``reference``".

    Rule: :func:`~jax_infodiscard.experiments.analyses.verdicts.no_change`
    over the two-level results of every network (mean over ``layers`` of
    the per-image difference): held if every mean over seeds lies within 2
    two-level standard errors of 0, did not hold if a change replicates
    (beyond 2 SE, every seed on one side), else inconclusive (also with one
    seed). An absence holds more easily with few images and seeds: read it
    with the spread. The first seed alone: held if no network's mean is
    beyond 2 SE over its images, else did not hold.
    """
    v, numbers = delta_verdict(
        groups,
        reference,
        quantity,
        layers,
        expect="positive",
        claim=claim,
        figure=figure,
    )
    if v is None or not numbers or "RU not measured" in v.measured:
        return v, numbers
    results = [
        V.replicated([V.SeedFigure(**f) for f in n["seeds"]], expect="positive")
        for n in numbers.values()
    ]
    outcome = V.no_change(results)
    firsts = [r.seeds[0] for r in results]
    if any(f.n < 2 for f in firsts):
        alone = "inconclusive"
    elif all(f.outcome == "inconclusive" for f in firsts):
        alone = "held"
    else:
        alone = "did not hold"
    for n in numbers.values():
        n["outcome"] = outcome
    rule = (
        f"per-image difference of {quantity} (mean over the layers); over "
        "seeds: the mean of the seed means within 2 SE over seeds of 0 for every "
        "compared network: held; a change beyond 2 SE with every seed on one "
        "side: did not hold; else (or one seed) inconclusive"
    )
    return dataclasses.replace(v, outcome=outcome, rule=rule, alone=alone), numbers
