"""The networks an analysis compares: solver and decoder settings per scale,
training (or loading from the shared cache), and the test images analysed.

Solver settings per scale: ``toy`` and ``fast`` shrink the solver (fewer
iterations and probes, and one vectorised program for all layers, which
compiles once instead of once per layer); ``full`` runs ``steps=48`` (the
preamble's knob for sweeps) and otherwise the default
:class:`~jax_infodiscard.config.CIDConfig`. A setting the user changed
(``--beta``, ``--method``) is never overridden.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jax_infodiscard.config import CIDConfig, RUConfig
from jax_infodiscard.data import TFDS_SPECS
from jax_infodiscard.experiments.analyses import AnalysisOptions
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
from jax_infodiscard.training.train import TrainConfig

__all__ = [
    "Timer",
    "analysed_images",
    "cid_config",
    "crop_scale",
    "decoder_config",
    "decoder_dir",
    "load_test",
    "masks_of",
    "ru_config",
    "train_model",
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


def decoder_dir(trained: TrainedModel, num_images: int, options: AnalysisOptions):
    """The RU decoders' cache folder of a cached model."""
    return decoder_cache_dir(trained.path, num_images=num_images, scale=options.scale)


def masks_of(options: AnalysisOptions, test: Examples, num: int) -> np.ndarray | None:
    """The masks of the first ``num`` test examples, or None (no annotations)."""
    if not dataset_has_masks(options.dataset) or test.masks is None:
        return None
    return np.asarray(test.masks[:num])


def analysed_images(options: AnalysisOptions, num: int):
    """``(test examples, analysed images (num, S, S, 3), masks or None)``."""
    test = load_test(options, max(num, 500))
    return test, np.asarray(test.images[:num]), masks_of(options, test, num)
