"""Train-or-load: one model cache shared by every job.

A trained model is identified by what shaped its weights: the architecture
(and its options), the data (data set, image size, number of training
images, crop), and the training configuration (seed included). That key
maps to one folder, ``CACHE/models/<readable name>-<hash>``; the
hash covers the whole key, the readable part is for people. Training and
its orbax checkpoints are :func:`jax_infodiscard.training.train`'s: this
module only chooses the folder, so a second job with the same key reuses
the model (and an interrupted training resumes), while any other setting
trains into a folder of its own.

The cache lives in ``$JAX_INFODISCARD_CACHE`` if set, else
``$XDG_CACHE_HOME/jax_infodiscard`` (``~/.cache/jax_infodiscard``); every
job takes ``cache_dir=`` (``--cache DIR``) to use another.

The same folder can hold JAX's persistent compilation cache
(:func:`enable_compilation_cache`, ``CACHE/xla``), which the command line
turns on: on a CPU most of a short job is XLA compilation, and a second run
of the same job then loads the compiled programs instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_infodiscard import io, validation
from jax_infodiscard.data import num_classes
from jax_infodiscard.experiments.data import Examples, load_examples
from jax_infodiscard.models.decoder import Decoder
from jax_infodiscard.training.checkpoint import (
    CheckpointFallbackWarning,
    CorruptCheckpointError,
    all_steps,
    describe_skipped,
    read_metadata,
    restore_checkpoint,
    save_checkpoint,
)
from jax_infodiscard.training.decoder import (
    DecoderConfig,
    DecoderMetrics,
    train_decoders,
)
from jax_infodiscard.training.train import TrainConfig, train
from jax_infodiscard.types import PRNGKey

__all__ = [
    "COMPILATION_CACHE_MAX_BYTES",
    "ModelSpec",
    "TrainedModel",
    "check_trained",
    "decoder_cache_dir",
    "decoder_checkpoint_path",
    "default_cache_dir",
    "enable_compilation_cache",
    "load_decoder",
    "load_or_train_decoder",
    "load_or_train_decoders",
    "model_cache_dir",
    "save_decoders",
    "train_or_load",
]

# Settings of TrainConfig that do not change the weights.
_NOT_IN_KEY = ("progress", "eval_batch_size", "keep_checkpoints")


def default_cache_dir() -> pathlib.Path:
    """``$JAX_INFODISCARD_CACHE``, else ``$XDG_CACHE_HOME/jax_infodiscard``."""
    env = os.environ.get("JAX_INFODISCARD_CACHE")
    if env:
        return pathlib.Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return pathlib.Path(xdg).expanduser() / "jax_infodiscard"


COMPILATION_CACHE_MAX_BYTES = 2 * 1024**3
"""Size cap of the persistent compilation cache (least recently used entries
go first); a cap also makes JAX lock the folder, so that several processes
(a job and the test workers, say) can share it."""


def enable_compilation_cache(
    cache_dir: str | os.PathLike | None = None,
    *,
    max_bytes: int = COMPILATION_CACHE_MAX_BYTES,
    min_compile_seconds: float = 0.5,
) -> pathlib.Path | None:
    """Turns on JAX's persistent compilation cache in ``cache_dir / "xla"``.

    A compiled program whose compilation took at least ``min_compile_seconds``
    is written there, and any later process that compiles the same program
    (same computation, shapes, backend and JAX version) loads it instead.
    This is global JAX configuration, for applications (the command line
    calls it); a library call never changes it behind the user's back. If the
    user has already set ``jax_compilation_cache_dir`` (or
    ``JAX_COMPILATION_CACHE_DIR``), that choice is kept.

    Args:
      cache_dir: the job cache (default :func:`default_cache_dir`).
      max_bytes: size cap of the folder, least recently used entries evicted.
      min_compile_seconds: shorter compilations are not stored.

    Returns:
      The compilation cache folder in use, or ``None`` when the user's own
      setting was kept.
    """
    import jax

    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ValueError(f"max_bytes must be a positive int, got {max_bytes!r}")
    if not min_compile_seconds >= 0:
        raise ValueError(
            f"min_compile_seconds must be >= 0, got {min_compile_seconds!r}"
        )
    if jax.config.jax_compilation_cache_dir:
        return None
    base = pathlib.Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    folder = base / "xla"
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_compilation_cache_max_size", int(max_bytes))
    jax.config.update(
        "jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds)
    )
    return folder


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What a cached model is trained on and how (its cache key).

    Attributes:
      model: zoo model name.
      dataset: data set name (``"synthetic"`` or a tfds name).
      image_size: image side in pixels.
      num_train: training images (the first ones of the train split).
      num_test: test images used for the reported accuracy.
      crop_scale: tfds sets with boxes: crop factor around the box, or None.
      train: training configuration (its ``seed`` seeds the model).
      model_kwargs: extra architecture options, as sorted ``(name, value)``
        pairs (a tuple keeps the spec hashable).
      variant: what else shaped the weights, as ``(name, value)`` pairs: the
        training hooks passed to :func:`train_or_load` (a distillation
        teacher, adversarial training, pruning masks, a starting model). The
        spec must describe them, since the cache cannot see inside the
        callables; empty for plain training (and then left out of the key,
        so plain models keep their folders).
    """

    model: str
    dataset: str = "synthetic"
    image_size: int = 32
    num_train: int = 10_000
    num_test: int = 1_000
    crop_scale: float | None = None
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    model_kwargs: tuple[tuple[str, Any], ...] = ()
    variant: tuple[tuple[str, Any], ...] = ()

    def key(self) -> dict[str, Any]:
        """The cache key as a JSON-able dict."""
        train_cfg = {
            k: v
            for k, v in dataclasses.asdict(self.train).items()
            if k not in _NOT_IN_KEY
        }
        key = {
            "model": self.model,
            "model_kwargs": dict(self.model_kwargs),
            "dataset": self.dataset,
            "image_size": self.image_size,
            "num_train": self.num_train,
            "crop_scale": self.crop_scale,
            "train": train_cfg,
        }
        if self.variant:
            key["variant"] = dict(self.variant)
        return io.jsonable(key)

    def folder_name(self) -> str:
        """``<model>-<dataset>-<S>px-n<N>-e<epochs>-s<seed>-<hash>``."""
        digest = hashlib.sha256(
            json.dumps(self.key(), sort_keys=True).encode()
        ).hexdigest()[:10]
        name = (
            f"{self.model}-{self.dataset}-{self.image_size}px-n{self.num_train}"
            f"-e{self.train.epochs}-s{self.train.seed}"
        )
        return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}-{digest}"


def model_cache_dir(
    spec: ModelSpec, cache_dir: str | os.PathLike | None = None
) -> pathlib.Path:
    """The checkpoint folder of ``spec`` inside the cache."""
    root = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
    return root / "models" / spec.folder_name()


def decoder_cache_dir(model_dir: str | os.PathLike, **data: Any) -> pathlib.Path:
    """Folder of the RU decoders of a cached model, trained on ``data``.

    ``load_or_train_decoder`` checks layer, shapes and decoder config but
    not the training images, so the folder is keyed by a description of
    them (e.g. ``num_images=4000``) next to the model's folder.

    >>> decoder_cache_dir("/c/models/convnet-x", num_images=4000).name
    'num_images=4000'
    """
    model_dir = pathlib.Path(model_dir)
    tag = ",".join(f"{k}={v}" for k, v in sorted(data.items())) or "default"
    return model_dir.with_name(model_dir.name + ".decoders") / tag


class TrainedModel(NamedTuple):
    """A trained (or loaded) model with its data.

    Attributes:
      model: the Flax NNX module.
      accuracy: test accuracy after the last epoch (NaN without a test set).
      history: per-epoch training history (see ``train``).
      path: its checkpoint folder.
      train_data: the :class:`Examples` it was trained on.
      test_data: the test :class:`Examples` of the accuracy.
    """

    model: Any
    accuracy: float
    history: dict
    path: pathlib.Path
    train_data: Examples
    test_data: Examples


def train_or_load(
    spec: ModelSpec,
    cache_dir: str | os.PathLike | None = None,
    *,
    progress: bool = True,
    test_data: Examples | None = None,
    init_model: Any = None,
    loss: Any = None,
    batch_transform: Any = None,
    extra_transform: Any = None,
) -> TrainedModel:
    """Loads ``spec``'s model from the cache, or trains (and caches) it.

    Args:
      spec: the model and its training (the cache key).
      cache_dir: the cache (default :func:`default_cache_dir`).
      progress: progress bars while training.
      test_data: the test examples, if the caller already holds them
        (default: the first ``spec.num_test`` of the test split).
      init_model: start from this module (e.g. a pruned model to fine-tune)
        instead of a fresh ``spec.model``; it is not modified.
      loss, batch_transform, extra_transform: training hooks of
        :func:`~jax_infodiscard.training.train`.

    With ``init_model`` or any hook, ``spec.variant`` must describe them
    (it is part of the cache key); a ``ValueError`` says so otherwise.

    Returns:
      A :class:`TrainedModel`.
    """
    train_data = load_examples(
        spec.dataset,
        "train",
        spec.num_train,
        image_size=spec.image_size,
        crop_scale=spec.crop_scale,
    )
    if test_data is None:
        test_data = load_examples(
            spec.dataset,
            "test",
            spec.num_test,
            image_size=spec.image_size,
            crop_scale=spec.crop_scale,
        )
    hooked = [
        name
        for name, value in (
            ("init_model", init_model),
            ("loss", loss),
            ("batch_transform", batch_transform),
            ("extra_transform", extra_transform),
        )
        if value is not None
    ]
    if hooked and not spec.variant:
        raise ValueError(
            f"{', '.join(hooked)} change the trained weights: describe them in "
            "ModelSpec.variant so that the cache keeps this model apart"
        )
    path = model_cache_dir(spec, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    io.write_json(path.with_name(path.name + ".json"), spec.key())
    if init_model is not None:
        from flax import nnx

        init_model = nnx.clone(init_model)
    model, history = train(
        init_model if init_model is not None else spec.model,
        (train_data.images, train_data.labels),
        (test_data.images[: spec.num_test], test_data.labels[: spec.num_test]),
        dataclasses.replace(spec.train, progress=progress),
        checkpoint_dir=path,
        num_classes=num_classes(spec.dataset),
        image_size=spec.image_size,
        model_kwargs=dict(spec.model_kwargs) or None,
        loss=loss,
        batch_transform=batch_transform,
        extra_transform=extra_transform,
    )
    accuracy = float((history.get("test_accuracy") or [float("nan")])[-1])
    return TrainedModel(model, accuracy, history, path, train_data, test_data)


# ------------------------------------------------------------ RU decoders
# The store of the RU decoders, beside the models: one folder per model and
# training data (:func:`decoder_cache_dir`), one sub-folder per layer
# (:func:`decoder_checkpoint_path`), orbax checkpoints with digests
# (:mod:`jax_infodiscard.training.checkpoint`); loading falls back to the
# newest intact step.
_KIND = "ru_decoder"


def decoder_checkpoint_path(
    checkpoint_dir: str | pathlib.Path, layer: str
) -> pathlib.Path:
    """Checkpoint directory of ``layer``'s decoder inside ``checkpoint_dir``.

    The folder name is a readable slug of the layer name (characters other
    than letters, digits, ``.``, ``_`` and ``-`` become ``_``, at most 64 of
    them) followed by the first 12 hex digits of the SHA-256 of the exact
    name, so that layers such as ``a/b`` and ``a_b`` never share a folder.
    The metadata keeps the exact name and is checked on load.

    Args:
        checkpoint_dir: directory holding the decoders of one model.
        layer: layer name.

    Returns:
        ``checkpoint_dir / f"decoder_{slug}-{hash}"``.

    Raises:
        ValueError: ``layer`` is not a non-empty string.

    >>> decoder_checkpoint_path("ck", "a/b").name
    'decoder_a_b-c14cddc033f6'
    >>> decoder_checkpoint_path("ck", "a_b").name
    'decoder_a_b-648fa9b31bc7'
    """
    if not isinstance(layer, str) or not layer:
        raise ValueError(f"layer must be a non-empty string, got {layer!r}")
    slug = _slug(layer)[:64]
    digest = hashlib.sha256(layer.encode("utf-8")).hexdigest()[:12]
    return pathlib.Path(checkpoint_dir) / f"decoder_{slug}-{digest}"


def _slug(layer: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", layer)


def _metadata(
    layer: str,
    decoder: Decoder,
    config: DecoderConfig,
    metrics: DecoderMetrics,
) -> dict[str, Any]:
    return {
        "kind": _KIND,
        "layer": layer,
        "feature_shape": list(decoder.feature_shape),
        "image_shape": list(decoder.image_shape),
        "config": dataclasses.asdict(config),
        "steps": metrics.steps,
        "metrics": metrics.to_dict(),
    }


def save_decoders(
    checkpoint_dir: str | pathlib.Path,
    decoders: Mapping[str, Decoder],
    metrics: Mapping[str, DecoderMetrics],
    config: DecoderConfig,
) -> None:
    """Saves each layer's trained decoder to :func:`decoder_checkpoint_path`
    ``(checkpoint_dir, layer)`` at step ``config.steps``, with its layer,
    shapes, configuration and metrics as metadata.

    Raises:
        ValueError: a layer's folder holds another layer's decoder.
    """
    for name, decoder in decoders.items():
        path = decoder_checkpoint_path(checkpoint_dir, name)
        _check_folder_is_free(path, name)
        save_checkpoint(
            path,
            decoder,
            metadata=_metadata(name, decoder, config, metrics[name]),
            step=config.steps,
        )


def check_trained(metadata: Mapping[str, Any]) -> None:
    """Raises unless ``metadata`` describes a trained RU decoder.

    Args:
        metadata: the metadata of a decoder checkpoint (from
            :func:`load_decoder`).

    Raises:
        ValueError: not a decoder checkpoint, or trained for 0 steps (an
            untrained decoder would make RU meaningless).
    """
    if not isinstance(metadata, Mapping) or metadata.get("kind") != _KIND:
        raise ValueError(
            "metadata does not describe an RU decoder checkpoint (missing "
            f"kind={_KIND!r})"
        )
    steps = metadata.get("steps", 0)
    if not isinstance(steps, int) or steps <= 0:
        raise ValueError(
            f"the decoder of layer {metadata.get('layer')!r} is untrained "
            f"({steps} steps); train it before computing RU"
        )


def _builder(metadata: Mapping[str, Any]) -> Decoder:
    config = metadata.get("config", {})
    return Decoder(
        tuple(metadata["feature_shape"]),
        tuple(metadata["image_shape"]),
        num_blocks=int(config.get("num_blocks", 6)),
        width=int(config.get("width", 32)),
        # Checkpoints of earlier releases have no readout.
        readout_kernel=int(config.get("readout_kernel", 0)),
        dense_readout=bool(config.get("dense_readout", False)),
        rngs=nnx.Rngs(0),
    )


class _Candidate(NamedTuple):
    path: pathlib.Path
    step: int
    metadata: dict[str, Any]


def _feature_shapes(fn: Any, image_shape: tuple) -> dict[str, tuple]:
    """``{layer: feature shape without the batch axis}`` of the array features."""
    spec = jax.ShapeDtypeStruct((2, *image_shape), jnp.float32)
    out = jax.eval_shape(fn, spec)
    if not isinstance(out, Mapping):
        return {}
    return {
        k: tuple(int(s) for s in v.shape[1:])
        for k, v in out.items()
        if isinstance(v, jax.ShapeDtypeStruct)
    }


def _is_decoder_of(metadata: Mapping[str, Any], layer: str) -> bool:
    return metadata.get("kind") == _KIND and metadata.get("layer") == layer


def _candidates(
    checkpoint_dir: str | pathlib.Path, layer: str, skipped: list
) -> list[_Candidate]:
    """Steps holding a decoder of exactly ``layer``, newest first. Steps whose
    metadata is corrupt are appended to ``skipped`` as ``(path, step,
    reason)``."""
    found = []
    path = decoder_checkpoint_path(checkpoint_dir, layer)
    for step in reversed(all_steps(path)):
        try:
            metadata = read_metadata(path, step=step)
        except CorruptCheckpointError as err:
            skipped.append((path, step, err.reason))
            continue
        if _is_decoder_of(metadata, layer):
            found.append(_Candidate(path, step, metadata))
    return found


def _describe(skipped: list) -> str:
    """One line naming the corrupt steps of one or two folders."""
    folders: dict[pathlib.Path, list] = {}
    for path, step, reason in skipped:
        folders.setdefault(path, []).append((step, reason))
    return "; ".join(describe_skipped(path, items) for path, items in folders.items())


def _restore(candidate: _Candidate) -> tuple[Decoder, dict[str, Any]]:
    decoder, metadata = restore_checkpoint(
        candidate.path, step=candidate.step, builder=_builder
    )
    decoder.trained_steps = int(metadata.get("steps", 0))
    return decoder, metadata


def _check_folder_is_free(path: pathlib.Path, layer: str) -> None:
    """Refuses to write ``layer``'s decoder into a folder of another layer.

    Two layer names share a folder only if the first 12 hex digits of their
    SHA-256 agree (and their slugs); the metadata settles it.
    """
    for step in all_steps(path):
        try:
            metadata = read_metadata(path, step=step)
        except CorruptCheckpointError:
            continue  # replaced when the same step is saved
        if metadata.get("layer") not in (None, layer):
            raise ValueError(
                f"{path} holds the decoder of layer {metadata.get('layer')!r}, not "
                f"{layer!r} (their folder names collide); use another "
                "checkpoint_dir for one of them"
            )


def load_decoder(
    checkpoint_dir: str | pathlib.Path, layer: str, *, step: int | None = None
) -> tuple[Decoder, dict[str, Any]]:
    """Loads the decoder of ``layer`` saved by :func:`save_decoders`.

    Args:
        checkpoint_dir: the model's decoder directory (as given to
            :func:`save_decoders`).
        layer: layer name.
        step: checkpoint step (trained steps); ``None`` for the newest intact
            one (corrupt newer steps are skipped with one
            :class:`~jax_infodiscard.training.checkpoint.CheckpointFallbackWarning`
            line).

    Returns:
        ``(decoder, metadata)``; ``metadata["metrics"]`` holds the
        :class:`DecoderMetrics` as a dict.

    Raises:
        FileNotFoundError: no decoder checkpoint for ``layer`` (or none at
            ``step``).
        CorruptCheckpointError: the requested step, or every step, is
            corrupt.
    """
    path = decoder_checkpoint_path(checkpoint_dir, layer)
    skipped: list = []
    candidates = _candidates(checkpoint_dir, layer, skipped)
    if step is not None:
        candidates = [c for c in candidates if c.step == step]
        skipped = [s for s in skipped if s[1] == step]
        if not candidates and skipped:
            where, _, reason = skipped[0]
            raise CorruptCheckpointError(where / str(step), step, reason)
    for candidate in candidates:
        try:
            decoder, metadata = _restore(candidate)
        except CorruptCheckpointError as err:
            if step is not None:
                raise
            skipped.append((candidate.path, candidate.step, err.reason))
            continue
        newer = [s for s in skipped if s[1] > candidate.step]
        if newer:
            warnings.warn(
                f"{_describe(newer)}; using step {candidate.step}",
                CheckpointFallbackWarning,
                stacklevel=2,
            )
        return decoder, metadata
    if skipped:
        reason = f"no intact step ({_describe(skipped)})"
        raise CorruptCheckpointError(path, None, reason)
    at = "" if step is None else f" at step {step}"
    raise FileNotFoundError(
        f"no decoder checkpoint for layer {layer!r}{at} in {path}; train it with "
        "load_or_train_decoder(..., checkpoint_dir=...) first"
    )


def _config_matches(
    metadata: Mapping[str, Any], layer: str, config: DecoderConfig
) -> bool:
    """Whether a checkpoint's metadata is a decoder of ``layer`` trained with
    ``config``."""
    try:
        # Checkpoints of earlier releases have no readout.
        saved_config = DecoderConfig(
            **{"readout_kernel": 0, "dense_readout": False, **metadata["config"]}
        )
    except (KeyError, TypeError, ValueError):
        return False
    return (
        metadata.get("kind") == _KIND
        and metadata.get("layer") == layer
        and saved_config == config
    )


def _matches(
    metadata: Mapping[str, Any],
    layer: str,
    feature_shape: tuple,
    image_shape: tuple,
    config: DecoderConfig,
) -> bool:
    return (
        _config_matches(metadata, layer, config)
        and tuple(metadata.get("feature_shape", ())) == feature_shape
        and tuple(metadata.get("image_shape", ())) == image_shape
    )


def cached_decoder_layers(
    checkpoint_dir: str | pathlib.Path,
    layers: Sequence[str],
    config: DecoderConfig,
) -> tuple[str, ...]:
    """The names of ``layers`` that have a decoder checkpoint in
    ``checkpoint_dir`` trained with ``config`` (what
    :func:`load_or_train_decoders` will reuse, as far as the metadata tells:
    the shapes and the files' integrity are checked only when loading).

    Args:
      checkpoint_dir: the model's decoder directory.
      layers: layer names.
      config: the decoders' configuration.

    Returns:
      The matching names, in the order of ``layers``.
    """
    return tuple(
        layer
        for layer in layers
        if any(
            _config_matches(c.metadata, layer, config)
            for c in _candidates(checkpoint_dir, layer, [])
        )
    )


def _load_matching(
    checkpoint_dir: str | pathlib.Path,
    layer: str,
    feature_shape: tuple,
    image_shape: tuple,
    config: DecoderConfig,
    skipped: list,
) -> tuple[Decoder, DecoderMetrics] | None:
    """The newest intact checkpoint of ``layer`` matching the shapes and
    ``config``, or ``None``; corrupt ones are appended to ``skipped``."""
    for candidate in _candidates(checkpoint_dir, layer, skipped):
        if not _matches(candidate.metadata, layer, feature_shape, image_shape, config):
            continue
        try:
            decoder, metadata = _restore(candidate)
        except CorruptCheckpointError as err:
            skipped.append((candidate.path, candidate.step, err.reason))
            continue
        return decoder, DecoderMetrics.from_dict(metadata["metrics"])
    return None


def load_or_train_decoder(
    feature_fn: Callable,
    layer: str,
    images: np.ndarray,
    config: DecoderConfig = DecoderConfig(),
    *,
    key: PRNGKey,
    checkpoint_dir: str | pathlib.Path,
    progress: bool = True,
) -> tuple[Decoder, DecoderMetrics]:
    """Reuses a matching decoder checkpoint, else trains (and saves) one.

    A checkpoint in :func:`decoder_checkpoint_path` ``(checkpoint_dir,
    layer)`` matches when its metadata has the same layer, feature shape,
    image shape and :class:`DecoderConfig`. The images and ``key`` are not
    compared: ``checkpoint_dir`` must be specific to the model (and data).

    Args:
        feature_fn: as in ``train_decoder``.
        layer: layer name.
        images: ``(N, H, W, C)`` float32 training images in [0, 1].
        config: decoder and training hyper-parameters.
        key: PRNG key used when training is needed.
        checkpoint_dir: the model's decoder directory.
        progress: show a progress bar when training.

    Corrupt checkpoints (a missing, truncated or altered file) are passed
    over: when no intact matching one remains, the decoder is trained again
    (and saved over the corrupt step), with one
    :class:`~jax_infodiscard.training.checkpoint.CheckpointFallbackWarning`
    line.

    Returns:
        ``(decoder, metrics)`` as ``train_decoder`` returns them (restored
        from the metadata when the checkpoint is reused).

    Raises:
        ValueError: as ``train_decoder``.
        FloatingPointError: as ``train_decoder``.
    """
    if not isinstance(layer, str) or not layer:
        raise ValueError(f"layer must be a non-empty string, got {layer!r}")
    decoders, metrics = load_or_train_decoders(
        feature_fn,
        (layer,),
        images,
        config,
        key=key,
        checkpoint_dir=checkpoint_dir,
        progress=progress,
    )
    return decoders[layer], metrics[layer]


def load_or_train_decoders(
    feature_fn: Callable,
    layers: str | Sequence[str],
    images: np.ndarray,
    config: DecoderConfig = DecoderConfig(),
    *,
    key: PRNGKey,
    checkpoint_dir: str | pathlib.Path,
    progress: bool = True,
) -> tuple[dict[str, Decoder], dict[str, DecoderMetrics]]:
    """:func:`load_or_train_decoder` for several layers: reuses each layer's
    matching checkpoint, and trains the missing decoders together
    (``train_decoders``, one shared forward pass per step) and saves them.

    A checkpoint matches as in :func:`load_or_train_decoder` (layer, shapes,
    :class:`DecoderConfig`), whether it was trained alone or together with
    other layers. Corrupt checkpoints are passed over with one
    :class:`~jax_infodiscard.training.checkpoint.CheckpointFallbackWarning`
    line naming them.

    Args:
        feature_fn: as in ``train_decoders``.
        layers: a layer name or distinct names.
        images: ``(N, H, W, C)`` float32 training images in [0, 1].
        config: decoder and training hyper-parameters.
        key: PRNG key of ``train_decoders`` when training is needed.
        checkpoint_dir: the model's decoder directory.
        progress: show a progress bar when training.

    Returns:
        ``(decoders, metrics)``: dicts keyed by layer, in the order of
        ``layers`` (metrics restored from the metadata when reused).

    Raises:
        ValueError, TypeError, FloatingPointError: as ``train_decoders``.
    """
    if not isinstance(config, DecoderConfig):
        raise ValueError(f"config must be a DecoderConfig, got {type(config).__name__}")
    layers = validation.check_names("layers", layers)
    images = np.asarray(validation.check_images(images, unit_range=True))
    fn = validation.as_partial(feature_fn, "feature_fn")
    image_shape = tuple(images.shape[1:])
    shapes = _feature_shapes(fn, image_shape)
    found: dict[str, tuple[Decoder, DecoderMetrics]] = {}
    skipped: list = []  # corrupt checkpoints of the layers without a match
    for name in layers:
        if name not in shapes:
            continue  # train_decoders names the unknown layer
        feature_shape = shapes[name]
        corrupt: list = []
        hit = _load_matching(
            checkpoint_dir, name, feature_shape, image_shape, config, corrupt
        )
        if hit is None:
            skipped += corrupt
        else:
            found[name] = hit
    missing = tuple(name for name in layers if name not in found)
    if missing:
        if skipped:  # one of them may have been a matching decoder
            warnings.warn(
                f"{_describe(skipped)}; training the decoder"
                f"{'s' if len(missing) > 1 else ''} of layer"
                f"{'s' if len(missing) > 1 else ''} "
                f"{', '.join(repr(n) for n in missing)} again",
                CheckpointFallbackWarning,
                stacklevel=2,
            )
        for name in missing:
            _check_folder_is_free(decoder_checkpoint_path(checkpoint_dir, name), name)
        decoders, metrics = train_decoders(
            fn, missing, images, config, key=key, progress=progress
        )
        save_decoders(checkpoint_dir, decoders, metrics, config)
        found.update({name: (decoders[name], metrics[name]) for name in missing})
    return (
        {name: found[name][0] for name in layers},
        {name: found[name][1] for name in layers},
    )
