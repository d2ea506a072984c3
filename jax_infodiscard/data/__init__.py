"""Data sets: the embedded synthetic shapes set and tfds loaders.

All loaders yield dicts of numpy arrays: ``"image"`` ``(B, H, W, 3)
float32`` in ``[0, 1]``, ``"label"`` ``(B,) int32`` and, where the data set
has annotations, ``"mask"`` ``(B, H, W) bool`` (foreground) and ``"box"``
``(B, 4) int32`` as ``(y0, x0, y1, x1)``, half-open pixel coordinates (the
convention of ``jax_infodiscard.box_to_mask``).

:func:`load_dataset` picks a data set by name. ``"synthetic"`` (the
default) is generated in memory and needs nothing else; the tfds names need
the optional ``data`` extra (``tensorflow-datasets``, imported lazily) and,
the first time, network access to download.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from jax_infodiscard.data.synthetic import (
    BLOCK_SIZE,
    SHAPE_NAMES,
    SPLIT_SEEDS,
    Dataset,
    SyntheticConfig,
    iterate_batches,
    load_synthetic,
    make_dataset,
    ridge_classifier_accuracy,
    tight_boxes,
)
from jax_infodiscard.data.tfds_loaders import TFDS_SPECS, TfdsSpec, iterate_tfds
from jax_infodiscard.data.transforms import batch_indices

__all__ = [
    "BLOCK_SIZE",
    "DATASET_NAMES",
    "SHAPE_NAMES",
    "SPLIT_SEEDS",
    "TFDS_SPECS",
    "Dataset",
    "SyntheticConfig",
    "TfdsSpec",
    "batch_indices",
    "iterate_batches",
    "iterate_tfds",
    "load_dataset",
    "load_synthetic",
    "make_dataset",
    "num_classes",
    "ridge_classifier_accuracy",
    "tight_boxes",
]

DATASET_NAMES: tuple[str, ...] = ("synthetic", *TFDS_SPECS)
"""Names accepted by :func:`load_dataset`."""


def _check_name(name: str) -> None:
    if name not in DATASET_NAMES:
        raise ValueError(
            f"unknown data set {name!r}; choose one of {list(DATASET_NAMES)}"
        )


def num_classes(name: str = "synthetic", config: SyntheticConfig | None = None) -> int:
    """Number of labels of a named data set.

    Args:
        name: One of :data:`DATASET_NAMES`.
        config: For ``"synthetic"``: its configuration (default
            ``SyntheticConfig()``).

    Returns:
        The number of classes.
    """
    _check_name(name)
    if name == "synthetic":
        return (config or SyntheticConfig()).num_classes
    return TFDS_SPECS[name].num_classes


def load_dataset(
    name: str = "synthetic",
    split: str = "train",
    *,
    image_size: int = 32,
    batch_size: int = 64,
    shuffle: bool = False,
    seed: int | None = None,
    drop_remainder: bool = False,
    num_epochs: int | None = 1,
    num_examples: int | None = None,
    crop_scale: float | None = None,
    config: SyntheticConfig | None = None,
    data_dir: str | None = None,
    download: bool = True,
) -> Iterator[dict[str, np.ndarray]]:
    """Numpy batches of a data set chosen by name.

    Args:
        name: ``"synthetic"`` (default, no download), ``"cifar10"``,
            ``"oxford_iiit_pet"`` or ``"caltech_birds2011"``.
        split: ``"train"`` or ``"test"`` (tfds data sets accept any tfds
            split string such as ``"train[:10%]"``).
        image_size: Output height and width in pixels.
        batch_size: Examples per batch.
        shuffle: Random order, a fresh one per epoch (requires ``seed``).
        seed: Shuffling seed (the synthetic images themselves come from the
            fixed per-split seeds of :func:`load_synthetic`).
        drop_remainder: Drop the short last batch of each epoch.
        num_epochs: Passes over the data; ``None`` repeats forever.
        num_examples: Number of examples (synthetic default: 10,000 train,
            2,000 test; tfds default: the whole split).
        crop_scale: tfds data sets with boxes only: crop to the object box
            enlarged this many times (``1.0`` classification, ``1.5``
            concentration, as in the paper); ``None`` keeps whole images.
        config: Synthetic data set configuration (default
            ``SyntheticConfig(image_size=image_size)``); its ``image_size``
            must equal ``image_size``.
        data_dir: tfds data directory (tfds only).
        download: Download and prepare a missing tfds data set (tfds only).

    Yields:
        Batch dicts ``{"image", "label"}`` plus ``{"mask", "box"}`` for
        annotated data sets (all but CIFAR-10).

    Raises:
        ValueError: Unknown name (the message lists the choices) or
            inconsistent arguments.
    """
    _check_name(name)
    if name != "synthetic":
        if config is not None:
            raise ValueError("config applies to the 'synthetic' data set only")
        return iterate_tfds(
            name,
            split,
            image_size=image_size,
            batch_size=batch_size,
            crop_scale=crop_scale,
            shuffle=shuffle,
            seed=seed,
            drop_remainder=drop_remainder,
            num_epochs=num_epochs,
            num_examples=num_examples,
            data_dir=data_dir,
            download=download,
        )
    if crop_scale is not None:
        raise ValueError(
            "crop_scale applies to tfds data sets with boxes; synthetic objects "
            "already lie inside their images"
        )
    if config is None:
        config = SyntheticConfig(image_size=image_size)
    elif config.image_size != image_size:
        raise ValueError(
            f"config.image_size={config.image_size} differs from "
            f"image_size={image_size}"
        )
    dataset = load_synthetic(split, num_examples, config=config)
    return iterate_batches(
        dataset,
        batch_size,
        shuffle=shuffle,
        seed=seed,
        drop_remainder=drop_remainder,
        num_epochs=num_epochs,
    )
