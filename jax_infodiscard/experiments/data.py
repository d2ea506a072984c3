"""Data for the jobs: any slice of a named data set, by global index.

Jobs address examples by their index in a split, so that shards, resumed
runs and several processes see exactly the same images. The embedded
synthetic set is generated in fixed blocks (a smaller set is a prefix of a
larger one), and tfds sets are read by random access
(``tfds.data_source``), so ``load_examples(name, split, n, start=s)`` is
always examples ``s .. s + n - 1`` of the same sequence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from jax_infodiscard.data import (
    DATASET_NAMES,
    TFDS_SPECS,
    SyntheticConfig,
    iterate_tfds,
    load_synthetic,
)
from jax_infodiscard.data.tfds_loaders import tfds_data_source
from jax_infodiscard.validation import check_int

__all__ = ["Examples", "dataset_has_masks", "load_examples", "split_size"]

SYNTHETIC_SPLIT_SIZES = {"train": 10_000, "test": 2_000}
"""Default sizes of the embedded splits (any size can be generated)."""


class Examples(NamedTuple):
    """A slice of a data set.

    Attributes:
      images: ``float32 (N, S, S, 3)`` in ``[0, 1]``.
      labels: ``int32 (N,)``.
      masks: ``bool (N, S, S)`` foreground, or ``None`` (no annotations).
      boxes: ``int32 (N, 4)`` ``(y0, x0, y1, x1)`` half-open, or ``None``.
    """

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None
    boxes: np.ndarray | None


def _check(dataset: str) -> None:
    if dataset not in DATASET_NAMES:
        raise ValueError(
            f"unknown data set {dataset!r}; choose one of {list(DATASET_NAMES)}"
        )


def dataset_has_masks(dataset: str) -> bool:
    """Whether the data set's examples carry foreground masks and boxes."""
    _check(dataset)
    return dataset == "synthetic" or TFDS_SPECS[dataset].annotated


class _Slice(Sequence):
    """Records ``start .. stop - 1`` of a random-access source."""

    def __init__(self, source: Sequence[Mapping[str, Any]], start: int, stop: int):
        self._source, self._start, self._len = source, start, max(stop - start, 0)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i):
        if not 0 <= i < self._len:
            raise IndexError(i)
        return self._source[self._start + int(i)]


def split_size(
    dataset: str, split: str, *, data_dir: str | None = None, download: bool = True
) -> int:
    """Number of examples of a split (synthetic: its default size)."""
    _check(dataset)
    if dataset == "synthetic":
        if split not in SYNTHETIC_SPLIT_SIZES:
            raise ValueError(
                f"unknown split {split!r} of the synthetic data set; choose one of "
                f"{list(SYNTHETIC_SPLIT_SIZES)}"
            )
        return SYNTHETIC_SPLIT_SIZES[split]
    return len(tfds_data_source(dataset, split, data_dir=data_dir, download=download))


def load_examples(
    dataset: str,
    split: str,
    num: int,
    *,
    start: int = 0,
    image_size: int = 32,
    crop_scale: float | None = None,
    data_dir: str | None = None,
    download: bool = True,
) -> Examples:
    """Examples ``start .. start + num - 1`` of a split (fewer at its end).

    Args:
      dataset: a name of :data:`jax_infodiscard.data.DATASET_NAMES`.
      split: ``"train"``/``"test"`` (tfds: any tfds split string).
      num: number of examples, ``>= 1``.
      start: index of the first example, ``>= 0``.
      image_size: image side ``S`` (the synthetic set needs ``S >= 16``).
      crop_scale: tfds sets with boxes: crop to the box enlarged this many
        times (``1.5``: the paper's concentration crop); ``None``: whole
        images. Must be ``None`` for the synthetic set.
      data_dir: tfds data folder.
      download: let tfds download a missing data set.

    Returns:
      :class:`Examples`; empty arrays when ``start`` is past the end.

    Raises:
      ValueError: unknown data set or split, bad sizes.
    """
    _check(dataset)
    num = check_int("num", num, 1)
    start = check_int("start", start, 0)
    if dataset == "synthetic":
        if crop_scale is not None:
            raise ValueError("crop_scale applies to tfds data sets with boxes")
        if split not in SYNTHETIC_SPLIT_SIZES:
            raise ValueError(
                f"unknown split {split!r} of the synthetic data set; choose one of "
                f"{list(SYNTHETIC_SPLIT_SIZES)}"
            )
        d = load_synthetic(
            split, start + num, config=SyntheticConfig(image_size=image_size)
        )
        return Examples(
            d.images[start:], d.labels[start:], d.masks[start:], d.boxes[start:]
        )
    source = tfds_data_source(dataset, split, data_dir=data_dir, download=download)
    stop = min(start + num, len(source))
    size = (image_size, image_size)
    annotated = TFDS_SPECS[dataset].annotated
    if stop <= start:
        return Examples(
            np.zeros((0, *size, 3), np.float32),
            np.zeros((0,), np.int32),
            np.zeros((0, *size), bool) if annotated else None,
            np.zeros((0, 4), np.int32) if annotated else None,
        )
    batches = list(
        iterate_tfds(
            dataset,
            split,
            image_size=image_size,
            batch_size=256,
            crop_scale=crop_scale,
            source=_Slice(source, start, stop),
        )
    )

    def cat(key: str) -> np.ndarray | None:
        if key not in batches[0]:
            return None
        return np.concatenate([b[key] for b in batches])

    return Examples(cat("image"), cat("label"), cat("mask"), cat("box"))
