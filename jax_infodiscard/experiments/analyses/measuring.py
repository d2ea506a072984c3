"""Measuring the compared networks: CID, concentration and RU layer by layer
on the same test images, through the measuring room
(:mod:`jax_infodiscard.experiments.measure`), with the analysis's settings."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax_infodiscard.evaluation.robustness import minimal_l2_attack
from jax_infodiscard.experiments import measure as room
from jax_infodiscard.experiments.analyses import AnalysisOptions
from jax_infodiscard.experiments.analyses.networks import (
    Timer,
    cid_config,
    decoder_config,
    decoder_dir,
    ru_config,
    train_model,
)
from jax_infodiscard.experiments.cache import TrainedModel
from jax_infodiscard.experiments.data import Examples
from jax_infodiscard.models import feature_fn, model_fn

__all__ = [
    "Measured",
    "mean_sem",
    "measure",
    "measure_trained",
    "train_and_measure",
]


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


def mean_sem(v: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the finite values (NaN where too few)."""
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
      variants: ``{name: kwargs}`` of
        :func:`~jax_infodiscard.experiments.analyses.networks.train_model`
        per network, in order; ``kwargs`` may be a callable
        ``(seed, trained) -> kwargs`` where ``trained`` maps the names
        before it to their :class:`TrainedModel` of this seed (a pruned
        net built from the original, a student from its teacher).
      seeds: training seeds.
      test, images, masks: the test examples, analysed images and masks.
      key: solver key (the same for every network: paired noise).
      timer: gets ``train_s`` and the measuring phases.
      ru_train: RU decoders' training images (0: no RU).
      layers: analysed layers (default: each model's ``default_layers``).
      **common: the
        :func:`~jax_infodiscard.experiments.analyses.networks.train_model`
        arguments shared by every network.

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


def robustness(
    models: Mapping[str, Sequence[TrainedModel]], images: Any, top_k: int
) -> dict[str, list[float]]:
    """Minimal-L2 adversarial robustness of every network, per seed.

    Args:
      models: ``{name: [trained network per seed]}``.
      images: the analysed images ``(N, H, W, C)``.
      top_k: class boundaries the attack crosses (the ``top_k`` nearest).

    Returns:
      ``{name: [mean minimal L2 norm per seed]}`` (higher is more robust).
    """
    return {
        name: [
            minimal_l2_attack(model_fn(t.model), images, top_k=top_k).robustness()
            for t in trained
        ]
        for name, trained in models.items()
    }
