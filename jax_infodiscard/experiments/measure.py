"""The measuring room: CID -> decoders (trained or loaded) -> RU -> concentration.

Every end-to-end job (the demo, ``evaluate``, ``run`` and the analyses)
measures a network through :func:`measure`, so that they agree on

* the RU configuration: :meth:`~jax_infodiscard.config.RUConfig.from_cid`
  of the CID one (every field, then the caller's changes);
* the decoder keys: the decoders of depth group ``i`` (layers that need the
  same number of decoder blocks train together, one forward pass per step)
  get :func:`decoder_key` ``(key, i)`` = ``fold_in(key, 100 + i)``;
* which layers get RU: those with a decoder that learned something
  (``DecoderMetrics.learned_nothing`` false), unless ``solve_unlearned``;
* concentration: NaN for images whose mask has no foreground or no
  background (:func:`concentration_or_nan`).

Progress goes out through a :class:`Listener`: a heading per phase and a call
per layer group that the solver finishes (the engine's ``on_group``), so no
caller regroups layers to print a line per layer.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jax_infodiscard as jid
from jax_infodiscard.config import CIDConfig, RUConfig
from jax_infodiscard.core import engine
from jax_infodiscard.core.cid import CID
from jax_infodiscard.core.ru import RU, check_decoders

__all__ = [
    "DECODER_KEY_OFFSET",
    "Decoders",
    "Listener",
    "Measurement",
    "concentration_or_nan",
    "decoder_depths",
    "decoder_key",
    "load_decoders",
    "measure",
    "ru_step",
    "solve",
    "train_or_load_decoders",
]

DECODER_KEY_OFFSET = 100
"""Depth group ``i`` of the RU decoders trains with ``fold_in(key, 100 + i)``."""


def decoder_key(key: jax.Array, group: int = 0) -> jax.Array:
    """The training key of the RU decoders of depth group ``group``.

    >>> k = jax.random.key(0)
    >>> bool((jax.random.key_data(decoder_key(k))
    ...       == jax.random.key_data(jax.random.fold_in(k, 100))).all())
    True
    """
    return jax.random.fold_in(key, DECODER_KEY_OFFSET + int(group))


class Listener:
    """Receives the progress of :func:`measure`; every method does nothing.

    Subclass and override what you want to show.
    """

    def phase(self, name: str, **facts: Any) -> None:
        """Phase ``name`` (``"cid"``, ``"decoders"``, ``"ru"``) starts."""

    def group(
        self, metric: str, layers: tuple[str, ...], outputs: dict, seconds: float
    ) -> None:
        """The solver finished ``layers`` of ``metric`` (``"cid"``/``"ru"``)
        on a chunk of images; ``outputs`` are host arrays ``(B, L_group, ...)``
        (``"pixel"``, ``"converged"``, ``"linearity"``, ...)."""

    def decoders(self, decoders: Decoders) -> None:
        """The decoders are trained or loaded."""

    def done(self, name: str, seconds: float) -> None:
        """Phase ``name`` ended after ``seconds``."""


def concentration_or_nan(pixel: Any, masks: Any) -> np.ndarray | None:
    """``(L, B)`` concentration of ``pixel (L, B, H, W)`` (nats per pixel), NaN
    for images whose mask lacks a fore- or background; ``None`` without masks.

    >>> pixel = np.zeros((1, 2, 2, 2), np.float32); pixel[0, :, 0, 0] = 1.0
    >>> masks = np.array([[[1, 0], [0, 0]], [[1, 1], [1, 1]]], bool)
    >>> concentration_or_nan(pixel, masks).round(3).tolist()
    [[-1.0, nan]]
    """
    if masks is None:
        return None
    pixel = np.asarray(pixel)
    masks = np.asarray(masks, bool)
    out = np.full(pixel.shape[:2], np.nan, np.float32)
    ok = masks.any(axis=(1, 2)) & (~masks).any(axis=(1, 2))
    if ok.any():
        out[:, ok] = np.asarray(jid.concentration(pixel[:, ok], masks[ok]))
    return out


def solve(
    metric: str,
    fn: Any,
    images: Any,
    key: jax.Array,
    layers: Sequence[str],
    config: CIDConfig,
    decoders: Mapping[str, Callable] | None = None,
    *,
    listener: Listener | None = None,
    quiet: bool = False,
):
    """:func:`jax_infodiscard.cid` (``metric="cid"``) or
    :func:`jax_infodiscard.ru` (``"ru"``, with ``decoders``), reporting each
    finished layer group to ``listener``; ``quiet`` silences the solver's
    warnings (for callers that report convergence themselves).

    Returns the result with NumPy arrays.
    """
    listener = listener or Listener()
    clock = [time.perf_counter()]

    def on_group(group, outputs):
        now = time.perf_counter()
        listener.group(metric, tuple(group), outputs, now - clock[0])
        clock[0] = now

    spec = (CID, None, None) if metric == "cid" else (RU, decoders, check_decoders)
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore", UserWarning)
        res = engine.compute(
            spec[0],
            fn,
            images,
            key,
            tuple(layers),
            config,
            spec[1],
            spec[2],
            on_group=on_group,
        )
    return res.to_numpy()


# ------------------------------------------------------------- decoders
@dataclasses.dataclass
class Decoders:
    """RU decoders of some layers.

    Attributes:
      fns: ``{layer: decoder function}`` (features -> images).
      metrics: ``{layer: DecoderMetrics}`` (empty for decoders loaded
        without their training record).
    """

    fns: dict[str, Callable]
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)

    def learned(self, layers: Sequence[str]) -> tuple[str, ...]:
        """Those of ``layers`` whose decoder learned something."""
        return tuple(
            n
            for n in layers
            if n not in self.metrics or not self.metrics[n].learned_nothing
        )


def decoder_depths(
    fn: Any, layers: Sequence[str], image_shape: Sequence[int], num_blocks: int
) -> dict[str, int]:
    """Blocks of each layer's decoder: ``num_blocks``, or more where the
    feature needs more 2x upsamplings to reach the image side."""
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    shapes = jax.eval_shape(fn, x)
    side = image_shape[0]
    out = {}
    for name in layers:
        shape = shapes[name].shape
        need = math.ceil(math.log2(side / shape[1])) if len(shape) == 4 else 0
        out[name] = max(num_blocks, need)
    return out


def train_or_load_decoders(
    fn: Any,
    layers: Sequence[str],
    images: Any,
    config: Any,
    key: jax.Array,
    *,
    folder: str | pathlib.Path | None = None,
    progress: bool = False,
) -> Decoders:
    """The decoders of ``layers``: loaded from ``folder`` where a matching one
    is stored, else trained (and stored there). Layers of the same depth
    (:func:`decoder_depths`) train together with :func:`decoder_key`."""
    from jax_infodiscard.experiments.cache import load_or_train_decoders
    from jax_infodiscard.models.decoder import decoder_fn
    from jax_infodiscard.training.decoder import train_decoders

    images = np.asarray(images)
    depths = decoder_depths(fn, layers, images.shape[1:], config.num_blocks)
    out = Decoders({})
    for i, depth in enumerate(sorted(set(depths.values()))):
        group = tuple(n for n in layers if depths[n] == depth)
        cfg = dataclasses.replace(config, num_blocks=depth)
        k = decoder_key(key, i)
        if folder is None:
            decs, metrics = train_decoders(
                fn, group, images, cfg, key=k, progress=progress
            )
        else:
            decs, metrics = load_or_train_decoders(
                fn, group, images, cfg, key=k, checkpoint_dir=folder, progress=progress
            )
        for name in group:
            out.fns[name] = decoder_fn(decs[name])
            out.metrics[name] = metrics[name]
    out.fns = {n: out.fns[n] for n in layers}
    out.metrics = {n: out.metrics[n] for n in layers}
    return out


def load_decoders(folder: str | pathlib.Path, layers: Sequence[str]) -> Decoders:
    """Stored decoders of ``layers`` (one sub-folder each) with their metrics."""
    from jax_infodiscard.experiments.cache import load_decoder
    from jax_infodiscard.models.decoder import decoder_fn
    from jax_infodiscard.training.decoder import DecoderMetrics

    out = Decoders({})
    for name in layers:
        decoder, meta = load_decoder(folder, name)
        out.fns[name] = decoder_fn(decoder)
        if "metrics" in meta:
            out.metrics[name] = DecoderMetrics.from_dict(meta["metrics"])
    return out


# ------------------------------------------------------------- pipeline
@dataclasses.dataclass
class Measurement:
    """What :func:`measure` found (NumPy arrays).

    Attributes:
      layers: the ``L`` CID layers.
      cid: the :class:`~jax_infodiscard.CIDResult`.
      concentration: CID concentration ``(L, B)`` or ``None`` (no masks).
      decoders: the :class:`Decoders` (``None`` without RU).
      ru: the :class:`~jax_infodiscard.RUResult` of ``ru_layers`` or ``None``.
      ru_layers: the layers RU was solved at.
      ru_concentration: RU concentration ``(len(ru_layers), B)`` or ``None``.
      seconds: wall time of the phases (``cid_s``, ``decoders_s``, ``ru_s``).
    """

    layers: tuple[str, ...]
    cid: Any
    concentration: np.ndarray | None = None
    decoders: Decoders | None = None
    ru: Any = None
    ru_layers: tuple[str, ...] = ()
    ru_concentration: np.ndarray | None = None
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)


def measure(
    fn: Any,
    images: Any,
    key: jax.Array,
    *,
    layers: Sequence[str],
    cid_config: CIDConfig = CIDConfig(),
    masks: Any = None,
    ru_config: RUConfig | None = None,
    decoders: Decoders | None = None,
    decoder_images: Any = None,
    decoder_config: Any = None,
    decoder_folder: str | pathlib.Path | None = None,
    ru_layers: Sequence[str] | None = None,
    solve_unlearned: bool = False,
    listener: Listener | None = None,
    quiet: bool = False,
    progress: bool = False,
    with_cid: bool = True,
) -> Measurement:
    """CID, then (with ``decoders`` or ``decoder_images``) decoders and RU, and
    concentration where ``masks`` are given.

    Args:
      fn: feature function ``images (B, H, W, C) -> {layer: (B, ...)}``.
      images: float32 ``(B, H, W, C)`` images in ``[0, 1]``.
      key: solver key (or one per image); the decoders train with
        :func:`decoder_key` of it.
      layers: the CID layers.
      cid_config: the CID solver's configuration.
      masks: bool ``(B, H, W)`` foreground masks, or ``None``.
      ru_config: RU's configuration (default ``RUConfig.from_cid(cid_config)``).
      decoders: decoders to use as they are (``run`` with a stored folder).
      decoder_images: training images of the decoders (``None``: no training).
      decoder_config: the decoders' :class:`DecoderConfig`.
      decoder_folder: where decoders are stored and looked up (``None``: train
        without storing).
      ru_layers: the RU layers (default ``layers``).
      solve_unlearned: solve RU also where the decoder learned nothing.
      listener: progress receiver.
      quiet: silence the solver's convergence warnings.
      progress: progress bar of the decoder training.
      with_cid: ``False`` skips the CID phase (``cid`` stays ``None``).

    Returns:
      A :class:`Measurement`.
    """
    listener = listener or Listener()
    layers = tuple(layers)
    out = Measurement(layers, None)
    if with_cid:
        t0 = time.perf_counter()
        listener.phase("cid", layers=layers)
        out.cid = solve(
            "cid", fn, images, key, layers, cid_config, listener=listener, quiet=quiet
        )
        out.concentration = concentration_or_nan(out.cid.pixel, masks)
        out.seconds["cid_s"] = _done(listener, "cid", t0)
    wanted = tuple(layers if ru_layers is None else ru_layers)
    if (decoders is None and decoder_images is None) or not wanted:
        return out
    if decoders is None:
        t0 = time.perf_counter()
        listener.phase("decoders", layers=wanted)
        decoders = train_or_load_decoders(
            fn,
            wanted,
            decoder_images,
            decoder_config,
            _one_key(key),
            folder=decoder_folder,
            progress=progress,
        )
        listener.decoders(decoders)
        out.seconds["decoders_s"] = _done(listener, "decoders", t0)
    out.decoders = decoders
    solved = wanted if solve_unlearned else decoders.learned(wanted)
    t0 = time.perf_counter()
    skipped = tuple(n for n in wanted if n not in solved)
    listener.phase("ru", layers=solved, skipped=skipped)
    if solved:
        cfg = RUConfig.from_cid(cid_config) if ru_config is None else ru_config
        fns = {n: decoders.fns[n] for n in solved}
        out.ru = solve(
            "ru", fn, images, key, solved, cfg, fns, listener=listener, quiet=quiet
        )
        out.ru_layers = solved
        out.ru_concentration = concentration_or_nan(out.ru.pixel, masks)
    out.seconds["ru_s"] = _done(listener, "ru", t0)
    return out


def _done(listener: Listener, name: str, since: float) -> float:
    seconds = time.perf_counter() - since
    listener.done(name, seconds)
    return seconds


def _one_key(key: jax.Array) -> jax.Array:
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if key.ndim:
        raise ValueError(
            "measure: training decoders needs a single key, got one per image "
            f"(shape {key.shape})"
        )
    return key


def ru_step(
    images: Any,
    key: jax.Array,
    *,
    decoder_images: Any,
    decoder_config: Any,
    cid_config: CIDConfig = CIDConfig(),
) -> Callable[[Any, tuple[str, ...]], dict[str, float]]:
    """``step(model, layers) -> {layer: mean RU}``: RU of a zoo model's layers
    (nats per pixel) on ``images``, with decoders trained for that model on
    ``decoder_images`` (not stored) and RU solved with ``cid_config``'s
    settings at every layer (the RU step of
    :func:`jax_infodiscard.evaluation.fairness.layer_fairness`)."""
    from jax_infodiscard.models import feature_fn

    def step(model: Any, layers: tuple[str, ...]) -> dict[str, float]:
        m = measure(
            feature_fn(model, layers),
            images,
            key,
            layers=layers,
            cid_config=cid_config,
            decoder_images=decoder_images,
            decoder_config=decoder_config,
            solve_unlearned=True,
            with_cid=False,
        )
        return {n: float(np.mean(m.ru.mean[i])) for i, n in enumerate(m.ru_layers)}

    return step
