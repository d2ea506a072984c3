"""Batching, cropping and resizing helpers shared by the data loaders.

Pure numpy. Coordinates follow one convention everywhere:

* A pixel ``(i, j)`` covers ``[i, i + 1) x [j, j + 1)``; its centre is at
  ``(i + 0.5, j + 0.5)``.
* Boxes and crop windows are ``(y0, x0, y1, x1)`` in pixel units, half-open
  (the same convention as ``jax_infodiscard.box_to_mask``). Integer boxes
  select rows ``y0 <= y < y1`` and columns ``x0 <= x < x1``; windows may be
  fractional.

Resampling uses separable weight matrices, so a crop-and-resize of an
``(h, w, C)`` image to ``(H, W)`` is two small matrix products
(``Wy @ image @ Wx.T``): a linear (triangle) filter widened by the
downsampling factor, i.e. antialiased when shrinking, like
``jax.image.resize(..., "linear", antialias=True)``. Masks use nearest
neighbour so that they stay boolean.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = [
    "batch_indices",
    "box_in_window",
    "crop_resize_image",
    "crop_resize_mask",
    "crop_window",
    "nearest_indices",
    "resize_weights",
]


def batch_indices(
    num_examples: int,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int | None = None,
    drop_remainder: bool = False,
    num_epochs: int | None = 1,
) -> Iterator[np.ndarray]:
    """Index batches over ``range(num_examples)``, epoch after epoch.

    Epoch ``e`` is shuffled with its own stream
    ``SeedSequence(seed, spawn_key=(e,))``, so the order is reproducible and
    changes between epochs.

    Args:
        num_examples: Size of the data set, ``>= 1``.
        batch_size: Indices per batch, ``>= 1``.
        shuffle: Random order (requires ``seed``); otherwise ``0, 1, ...``.
        seed: Non-negative shuffling seed.
        drop_remainder: Skip the short last batch of each epoch.
        num_epochs: Number of passes, ``>= 1``; ``None`` repeats forever.

    Yields:
        ``int64`` index arrays of shape ``(batch_size,)`` (the last one of an
        epoch may be shorter unless ``drop_remainder``).

    Raises:
        ValueError: For non-positive sizes, a missing seed when shuffling, or
            when ``drop_remainder`` would leave no batch at all.
    """
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1 or None, got {num_epochs}")
    if shuffle and (seed is None or seed < 0):
        raise ValueError("shuffle=True needs a non-negative integer seed")
    if drop_remainder and batch_size > num_examples:
        raise ValueError(
            f"batch_size {batch_size} > {num_examples} examples with "
            "drop_remainder=True yields no batch"
        )
    return _index_batches(
        num_examples, batch_size, shuffle, seed, drop_remainder, num_epochs
    )


def _index_batches(
    num_examples: int,
    batch_size: int,
    shuffle: bool,
    seed: int | None,
    drop_remainder: bool,
    num_epochs: int | None,
) -> Iterator[np.ndarray]:
    epoch = 0
    while num_epochs is None or epoch < num_epochs:
        if shuffle:
            ss = np.random.SeedSequence(seed, spawn_key=(epoch,))
            order = np.random.default_rng(ss).permutation(num_examples)
        else:
            order = np.arange(num_examples)
        stop = num_examples - (num_examples % batch_size if drop_remainder else 0)
        for start in range(0, stop, batch_size):
            yield order[start : min(start + batch_size, stop)]
        epoch += 1


def crop_window(box: np.ndarray, scale: float, image_hw: tuple[int, int]) -> np.ndarray:
    """Crop window around a box, enlarged ``scale`` times and clipped.

    The window has the box's centre and ``scale`` times its height and width
    (``scale=1``: the box itself; ``1.5``: the paper's concentration crop),
    intersected with the image ``[0, h) x [0, w)``. For ``scale >= 1`` it
    contains the (clipped) box.

    Args:
        box: ``(4,)`` ``(y0, x0, y1, x1)`` in pixels, ``y0 < y1``, ``x0 < x1``.
        scale: Enlargement factor, ``> 0``.
        image_hw: ``(h, w)`` of the image in pixels.

    Returns:
        ``float64`` ``(4,)`` window ``(y0, x0, y1, x1)`` in pixels.
    """
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    y0, x0, y1, x1 = np.asarray(box, np.float64)
    if not (y1 > y0 and x1 > x0):
        raise ValueError(f"box must have y0 < y1 and x0 < x1, got {box}")
    h, w = image_hw
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    hh, hw = scale * (y1 - y0) / 2, scale * (x1 - x0) / 2
    return np.array(
        [max(cy - hh, 0.0), max(cx - hw, 0.0), min(cy + hh, h), min(cx + hw, w)]
    )


def resize_weights(
    in_size: int, out_size: int, start: float = 0.0, length: float | None = None
) -> np.ndarray:
    """Linear resampling matrix from a window of a 1-D signal.

    Output sample ``j`` sits at ``start + (j + 0.5) * length / out_size`` in
    input pixel units and averages input pixels with a triangle filter of
    half-width ``max(1, length / out_size)`` (antialiasing when shrinking).
    Weights outside the input are dropped and each row renormalised.

    Args:
        in_size: Number of input pixels.
        out_size: Number of output pixels.
        start: Start of the window, in input pixels.
        length: Length of the window, ``> 0``; default ``in_size - start``.

    Returns:
        ``float32`` ``(out_size, in_size)``; each row sums to 1.
    """
    if length is None:
        length = in_size - start
    if length <= 0 or in_size < 1 or out_size < 1:
        raise ValueError(
            f"need in_size, out_size >= 1 and length > 0, got {in_size}, "
            f"{out_size}, {length}"
        )
    step = length / out_size
    width = max(1.0, step)
    centres = start + (np.arange(out_size) + 0.5) * step  # input-pixel units
    dist = (np.arange(in_size) + 0.5)[None, :] - centres[:, None]
    wts = np.maximum(0.0, 1.0 - np.abs(dist) / width)
    total = wts.sum(axis=1, keepdims=True)
    # A window centre outside the image (cannot happen for clipped windows)
    # would have no weight: fall back to the nearest pixel.
    nearest = np.clip(np.floor(centres).astype(np.int64), 0, in_size - 1)
    empty = total[:, 0] <= 0
    wts[empty, nearest[empty]] = 1.0
    total[empty] = 1.0
    return (wts / total).astype(np.float32)


def nearest_indices(
    in_size: int, out_size: int, start: float = 0.0, length: float | None = None
) -> np.ndarray:
    """Nearest input pixel for each output pixel of a window (see above).

    Returns:
        ``int64`` ``(out_size,)`` indices in ``[0, in_size)``.
    """
    if length is None:
        length = in_size - start
    centres = start + (np.arange(out_size) + 0.5) * (length / out_size)
    return np.clip(np.floor(centres).astype(np.int64), 0, in_size - 1)


def crop_resize_image(
    image: np.ndarray, window: np.ndarray, out_hw: tuple[int, int]
) -> np.ndarray:
    """Crops a window of an image and resizes it (antialiased linear).

    Args:
        image: ``(h, w, C)`` or ``(N, h, w, C)`` array (any real dtype).
        window: ``(4,)`` ``(y0, x0, y1, x1)`` in pixels of ``image``.
        out_hw: Output ``(H, W)``.

    Returns:
        ``float32`` ``(H, W, C)`` (or ``(N, H, W, C)``), in the units of the
        input (a ``uint8`` image stays in ``[0, 255]``).
    """
    image = np.asarray(image)
    h, w = image.shape[-3:-1]
    y0, x0, y1, x1 = (float(t) for t in window)
    wy = resize_weights(h, out_hw[0], y0, y1 - y0)
    wx = resize_weights(w, out_hw[1], x0, x1 - x0)
    x = image.astype(np.float32, copy=False)
    return np.einsum("Hh,...hwc,Ww->...HWc", wy, x, wx, optimize=True)


def crop_resize_mask(
    mask: np.ndarray,
    window: np.ndarray,
    out_hw: tuple[int, int],
    image_hw: tuple[int, int] | None = None,
) -> np.ndarray:
    """Crops and resizes a mask by nearest neighbour.

    The window is given in the pixels of the *image* the mask belongs to; a
    mask stored at another resolution (``mask.shape != image_hw``) is read
    as if stretched over the image.

    Args:
        mask: ``(hm, wm)`` boolean (or integer label) array.
        window: ``(4,)`` ``(y0, x0, y1, x1)`` in image pixels.
        out_hw: Output ``(H, W)``.
        image_hw: ``(h, w)`` of the image; default the mask's own shape.

    Returns:
        ``(H, W)`` array of ``mask.dtype``.
    """
    mask = np.asarray(mask)
    hm, wm = mask.shape
    h, w = image_hw if image_hw is not None else (hm, wm)
    y0, x0, y1, x1 = (float(t) for t in window)
    sy, sx = hm / h, wm / w
    rows = nearest_indices(hm, out_hw[0], y0 * sy, (y1 - y0) * sy)
    cols = nearest_indices(wm, out_hw[1], x0 * sx, (x1 - x0) * sx)
    return mask[rows[:, None], cols[None, :]]


def box_in_window(
    box: np.ndarray, window: np.ndarray, out_hw: tuple[int, int]
) -> np.ndarray:
    """Maps a box into the pixels of a cropped-and-resized window.

    The continuous box is scaled into output pixels, then rounded outwards to
    whole pixels (with a 1e-4 pixel tolerance against rounding noise) and
    clipped to the output.

    Args:
        box: ``(4,)`` ``(y0, x0, y1, x1)`` in input pixels.
        window: ``(4,)`` crop window in input pixels.
        out_hw: Output ``(H, W)``.

    Returns:
        ``int32`` ``(4,)`` ``(y0, x0, y1, x1)``, half-open output pixels.
    """
    b = np.asarray(box, np.float64)
    wy0, wx0, wy1, wx1 = np.asarray(window, np.float64)
    out_h, out_w = out_hw
    sy, sx = out_h / (wy1 - wy0), out_w / (wx1 - wx0)
    y0, y1 = (b[0] - wy0) * sy, (b[2] - wy0) * sy
    x0, x1 = (b[1] - wx0) * sx, (b[3] - wx0) * sx
    tol = 1e-4
    out = np.array(
        [
            np.clip(np.floor(y0 + tol), 0, out_h),
            np.clip(np.floor(x0 + tol), 0, out_w),
            np.clip(np.ceil(y1 - tol), 0, out_h),
            np.clip(np.ceil(x1 - tol), 0, out_w),
        ]
    )
    return out.astype(np.int32)
