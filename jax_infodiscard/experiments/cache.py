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
from typing import Any, NamedTuple

from jax_infodiscard import io
from jax_infodiscard.data import num_classes
from jax_infodiscard.experiments.data import Examples, load_examples
from jax_infodiscard.training.train import TrainConfig, train

__all__ = [
    "COMPILATION_CACHE_MAX_BYTES",
    "ModelSpec",
    "TrainedModel",
    "decoder_cache_dir",
    "default_cache_dir",
    "enable_compilation_cache",
    "model_cache_dir",
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
