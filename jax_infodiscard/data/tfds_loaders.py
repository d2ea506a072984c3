"""tensorflow-datasets loaders (optional extra ``data``), TensorFlow-free.

Records are read with ``tfds.data_source`` (ArrayRecord random access),
which needs ``tensorflow-datasets`` and ``array-record`` but not TensorFlow:
``pip install "jax_infodiscard[data]"``. The first use of a real data set
downloads and prepares it (``download=True``); that needs network access
(e.g. on Colab), and some builders need TensorFlow to *prepare* the files.
Offline, point ``data_dir`` at a directory that already holds the prepared
ArrayRecord files and pass ``download=False``. Tests run entirely offline
under ``tfds.testing.mock_data``.

Supported data sets and what their batches hold:

* ``"cifar10"``: 32x32 images, 10 classes, no annotations. Batches have no
  ``"mask"`` and no ``"box"`` key (concentration cannot be computed on it);
  images are resized to ``image_size`` if it is not 32.
* ``"oxford_iiit_pet"``: 37 breeds with trimaps. Foreground = trimap values
  1 (pet) and 3 (pet outline); the object box is the tight box of that mask
  (the data set's own box covers only the head). A record whose mask has no
  foreground gets the whole image as its box and an all-``False`` mask.
* ``"caltech_birds2011"``: 200 species with boxes and soft segmentations.
  Foreground = segmentation value >= 128 (most annotators agree); the box is
  the annotated bird box.

Crops follow the paper: with ``crop_scale=1.0`` the image is cropped to
the object box (the paper's classification setting); with
``crop_scale=1.5`` to a box 1.5 times as high and wide around the same
centre (its concentration setting), clipped to the image; with
``crop_scale=None`` (default) the whole image is kept. The result is resized to
``(image_size, image_size)`` (antialiased linear, aspect ratio not kept)
and scaled to ``float32`` in ``[0, 1]``; the mask is resampled by nearest
neighbour from its own resolution (it may differ from the image's), and the
box is mapped into the output pixels.

Every batch is a dict of numpy arrays:
``"image"`` ``(B, S, S, 3) float32`` in ``[0, 1]``, ``"label"`` ``(B,) int32``,
and for annotated data sets ``"mask"`` ``(B, S, S) bool`` and ``"box"``
``(B, 4) int32`` as ``(y0, x0, y1, x1)``, half-open output pixels (the
convention of ``jax_infodiscard.box_to_mask``).

Reading records and decoding images is per record (the records have
different sizes); each record then costs two small matrix products.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from jax_infodiscard.data.transforms import (
    batch_indices,
    box_in_window,
    crop_resize_image,
    crop_resize_mask,
    crop_window,
    resize_weights,
)

__all__ = [
    "TFDS_SPECS",
    "TfdsSpec",
    "iterate_tfds",
    "prepare_example",
    "tfds_data_source",
]


def _pet_foreground(trimap: np.ndarray) -> np.ndarray:
    return (trimap == 1) | (trimap == 3)


def _bird_foreground(segmentation: np.ndarray) -> np.ndarray:
    return segmentation >= 128


@dataclass(frozen=True)
class TfdsSpec:
    """How to read one tensorflow-datasets data set.

    Attributes:
        name: tfds name.
        num_classes: Number of labels.
        mask_key: Feature with the segmentation (``(h, w, 1)`` uint8), or
            ``None``.
        foreground: Maps the raw segmentation ``(h, w)`` to a bool mask.
        box_key: Feature with a normalised ``(ymin, xmin, ymax, xmax)`` box,
            or ``None`` (then the box is the tight box of the mask, if any).
    """

    name: str
    num_classes: int
    mask_key: str | None = None
    foreground: Callable[[np.ndarray], np.ndarray] | None = None
    box_key: str | None = None

    @property
    def annotated(self) -> bool:
        """Whether batches carry ``"mask"`` and ``"box"``."""
        return self.mask_key is not None or self.box_key is not None


TFDS_SPECS: dict[str, TfdsSpec] = {
    "cifar10": TfdsSpec("cifar10", 10),
    "oxford_iiit_pet": TfdsSpec(
        "oxford_iiit_pet", 37, "segmentation_mask", _pet_foreground
    ),
    "caltech_birds2011": TfdsSpec(
        "caltech_birds2011", 200, "segmentation_mask", _bird_foreground, "bbox"
    ),
}
"""Supported tfds data sets, by name."""


def _import_tfds() -> Any:
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError(
            "tensorflow-datasets loaders need the optional 'data' extra: "
            'pip install "jax_infodiscard[data]" (tensorflow-datasets and '
            "array-record; TensorFlow itself is not needed)"
        ) from err
    return tfds


def _spec(name: str) -> TfdsSpec:
    if name not in TFDS_SPECS:
        raise ValueError(
            f"unknown tfds data set {name!r}; choose one of {sorted(TFDS_SPECS)}"
        )
    return TFDS_SPECS[name]


def tfds_data_source(
    name: str, split: str, *, data_dir: str | None = None, download: bool = True
) -> Sequence[Mapping[str, Any]]:
    """Random-access ``tfds.data_source`` for a supported data set.

    Args:
        name: A key of :data:`TFDS_SPECS`.
        split: tfds split string, e.g. ``"train"``, ``"test"``,
            ``"train[:10%]"``.
        data_dir: tfds data directory (default ``~/tensorflow_datasets``).
        download: Download and prepare the data set if missing (network).

    Returns:
        A sequence of example dicts (numpy values), indexable by ``int``.
    """
    _spec(name)
    tfds = _import_tfds()
    return tfds.data_source(name, split=split, data_dir=data_dir, download=download)


def _pixel_box(normalised: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """Normalised ``(ymin, xmin, ymax, xmax)`` to a pixel box of >= 1 pixel.

    Coordinates are sorted and clipped to the image; a box thinner than one
    pixel is widened to one pixel around its centre (inside the image).
    """
    h, w = image_hw
    b = np.clip(np.asarray(normalised, np.float64), 0.0, 1.0)
    y0, y1 = sorted((b[0] * h, b[2] * h))
    x0, x1 = sorted((b[1] * w, b[3] * w))

    def widen(lo: float, hi: float, size: int) -> tuple[float, float]:
        if hi - lo >= 1.0:
            return lo, hi
        lo = min(max((lo + hi) / 2 - 0.5, 0.0), size - 1.0)
        return lo, lo + 1.0

    y0, y1 = widen(y0, y1, h)
    x0, x1 = widen(x0, x1, w)
    return np.array([y0, x0, y1, x1])


def _mask_box(mask: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """Tight box of a mask, in the pixels of an image of size ``image_hw``.

    The mask may have another resolution; its box is scaled to the image.
    An empty mask gives the whole image.
    """
    h, w = image_hw
    hm, wm = mask.shape
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return np.array([0.0, 0.0, float(h), float(w)])
    sy, sx = h / hm, w / wm
    return np.array(
        [rows[0] * sy, cols[0] * sx, (rows[-1] + 1) * sy, (cols[-1] + 1) * sx]
    )


def prepare_example(
    example: Mapping[str, Any],
    spec: TfdsSpec,
    *,
    image_size: int,
    crop_scale: float | None,
) -> dict[str, np.ndarray]:
    """Crops, resizes and normalises one tfds record.

    Args:
        example: A record of ``spec``'s data set: ``"image"`` ``(h, w, 3)`` or
            ``(h, w, 1)`` uint8, ``"label"``, and the annotation features.
        spec: The data set's :class:`TfdsSpec`.
        image_size: Output height and width ``S``.
        crop_scale: Crop to the object box enlarged this many times (clipped
            to the image); ``None`` keeps the whole image.

    Returns:
        ``{"image": (S, S, 3) float32 in [0, 1], "label": int32 scalar}``
        plus, for annotated data sets, ``"mask": (S, S) bool`` and
        ``"box": (4,) int32`` ``(y0, x0, y1, x1)`` half-open in output pixels.
    """
    image = np.asarray(example["image"])
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"expected an (h, w, 1|3) image, got shape {image.shape}")
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    hw = (int(image.shape[0]), int(image.shape[1]))
    out_hw = (image_size, image_size)

    mask = None
    if spec.mask_key is not None:
        raw = np.asarray(example[spec.mask_key])
        mask = spec.foreground(raw.reshape(raw.shape[:2]))
    box = None
    if spec.box_key is not None:
        box = _pixel_box(example[spec.box_key], hw)
    elif mask is not None:
        box = _mask_box(mask, hw)

    if box is not None and crop_scale is not None:
        window = crop_window(box, crop_scale, hw)
    else:
        window = np.array([0.0, 0.0, hw[0], hw[1]])
    pixels = crop_resize_image(image, window, out_hw) * np.float32(1 / 255)
    out = {
        "image": np.clip(pixels, 0.0, 1.0),
        "label": np.int32(example["label"]),
    }
    if mask is not None:
        out["mask"] = crop_resize_mask(mask, window, out_hw, image_hw=hw)
    if box is not None:
        out["box"] = box_in_window(box, window, out_hw)
    return out


def _stack_plain(examples: list[Mapping[str, Any]], image_size: int) -> dict:
    """Batch of same-sized, unannotated records (CIFAR-10), resized at once."""
    images = np.stack([np.asarray(ex["image"]) for ex in examples])
    labels = np.array([ex["label"] for ex in examples], np.int32)
    h, w = images.shape[1:3]
    if (h, w) == (image_size, image_size):
        pixels = images.astype(np.float32) * np.float32(1 / 255)
    else:
        wy, wx = resize_weights(h, image_size), resize_weights(w, image_size)
        pixels = np.einsum(
            "Hh,nhwc,Ww->nHWc", wy, images.astype(np.float32), wx, optimize=True
        )
        pixels = np.clip(pixels * np.float32(1 / 255), 0.0, 1.0)
    return {"image": pixels, "label": labels}


def iterate_tfds(
    name: str,
    split: str = "train",
    *,
    image_size: int = 32,
    batch_size: int = 64,
    crop_scale: float | None = None,
    shuffle: bool = False,
    seed: int | None = None,
    drop_remainder: bool = False,
    num_epochs: int | None = 1,
    num_examples: int | None = None,
    data_dir: str | None = None,
    download: bool = True,
    source: Sequence[Mapping[str, Any]] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Numpy batches of a tensorflow-datasets data set (see module doc).

    Args:
        name: ``"cifar10"``, ``"oxford_iiit_pet"`` or ``"caltech_birds2011"``.
        split: tfds split string.
        image_size: Output height and width ``S`` in pixels.
        crop_scale: Crop to the object box enlarged this many times
            (``1.0``: the paper's classification crop; ``1.5``: its
            concentration crop); ``None`` keeps the whole image. Only for
            annotated data sets (CIFAR-10 has no boxes).
        shuffle: Random order, a fresh one per epoch (requires ``seed``).
        seed: Shuffling seed.
        drop_remainder: Drop the short last batch of each epoch.
        num_epochs: Passes over the data; ``None`` repeats forever.
        num_examples: Use only the first ``num_examples`` records.
        data_dir: tfds data directory.
        download: Download and prepare if missing (needs network).
        source: An already opened data source (skips ``tfds.data_source``).

    Yields:
        Batch dicts as described in the module docstring.

    Raises:
        ValueError: Unknown name, bad sizes, or ``crop_scale`` for CIFAR-10.
    """
    spec = _spec(name)
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    if not spec.annotated and crop_scale is not None:
        raise ValueError(f"{name!r} has no object boxes: crop_scale must be None")
    if crop_scale is not None and crop_scale <= 0:
        raise ValueError(f"crop_scale must be > 0 or None, got {crop_scale}")
    if source is None:
        source = tfds_data_source(name, split, data_dir=data_dir, download=download)
    total = len(source)
    if num_examples is not None:
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        total = min(total, num_examples)
    batches = batch_indices(
        total,
        batch_size,
        shuffle=shuffle,
        seed=seed,
        drop_remainder=drop_remainder,
        num_epochs=num_epochs,
    )  # validates now, not at the first ``next``
    return _tfds_batches(source, spec, batches, image_size, crop_scale)


def _tfds_batches(
    source: Sequence[Mapping[str, Any]],
    spec: TfdsSpec,
    batches: Iterator[np.ndarray],
    image_size: int,
    crop_scale: float | None,
) -> Iterator[dict[str, np.ndarray]]:
    for idx in batches:
        examples = [source[int(i)] for i in idx]  # record reads + decoding
        if not spec.annotated:
            yield _stack_plain(examples, image_size)
            continue
        prepared = [
            prepare_example(ex, spec, image_size=image_size, crop_scale=crop_scale)
            for ex in examples
        ]
        yield {key: np.stack([p[key] for p in prepared]) for key in prepared[0]}
