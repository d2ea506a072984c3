"""Evaluation metrics of explanation maps: descriptive accuracy, localisation.

Sign conventions (which pixels a map calls *important*), see :func:`importance`:

* ``"cid"`` / ``"ru"``: pixel-wise CID or RU in nats. A low value means the
  layer tolerates little noise on the pixel, i.e. the network uses it, so
  importance is ``-map``.
* every other method (gradient, GxI, guided back-propagation, IG, SmoothGrad,
  LRP, LIME, CAM, Grad-CAM): importance is ``|map|`` (magnitude of the
  attribution, whatever its sign).

All functions here take importance maps, higher = more important.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jax_infodiscard.baselines.common import as_model_fn
from jax_infodiscard.types import Array

__all__ = [
    "DEFAULT_FRACTIONS",
    "NEGATED_METHODS",
    "descriptive_accuracy",
    "importance",
    "localization_recall",
]

DEFAULT_FRACTIONS = tuple(round(0.1 * i, 1) for i in range(10))
"""Fractions of removed pixels of paper Fig. 6: ``0, 0.1, ..., 0.9``."""

NEGATED_METHODS = frozenset({"cid", "ru"})
"""Methods whose maps are entropies (low = important): importance = -map."""


def importance(maps, method: str) -> Array:
    """Importance map (higher = more important) of a method's raw map.

    Args:
        maps: ``float (..., H, W)`` raw maps of the method (nats for CID/RU).
        method: method name; ``"cid"`` and ``"ru"`` (case-insensitive) are
            negated, all others are taken in absolute value.

    Returns:
        ``float32 (..., H, W)`` importance.
    """
    maps = jnp.asarray(maps, jnp.float32)
    if method.lower() in NEGATED_METHODS:
        return -maps
    return jnp.abs(maps)


def _check_maps(maps, batch: int | None, spatial: tuple[int, int] | None) -> Array:
    maps = jnp.asarray(maps)
    if maps.ndim != 3:
        raise ValueError(f"maps must have shape (B, H, W), got shape {maps.shape}")
    if batch is not None and maps.shape[0] != batch:
        raise ValueError(
            f"maps hold {maps.shape[0]} images but {batch} images/labels were given"
        )
    if spatial is not None and maps.shape[1:] != tuple(spatial):
        raise ValueError(
            f"maps have spatial shape {maps.shape[1:]}, images {tuple(spatial)}"
        )
    if not jnp.issubdtype(maps.dtype, jnp.floating):
        maps = maps.astype(jnp.float32)
    if not bool(jnp.all(jnp.isfinite(maps))):
        raise ValueError("maps contain NaN/inf values")
    return maps.astype(jnp.float32)


def _check_fractions(fractions) -> np.ndarray:
    arr = np.asarray(fractions, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"fractions must be a non-empty 1-d sequence, got {fractions}")
    if np.any(arr < 0) or np.any(arr >= 1):
        raise ValueError(f"fractions must lie in [0, 1), got {arr.tolist()}")
    if np.any(np.diff(arr) <= 0):
        raise ValueError(f"fractions must be strictly increasing, got {arr.tolist()}")
    return arr


def _rank_ascending(maps: Array) -> Array:
    """Rank of every pixel, 0 = least important; ``int32 (B, H*W)``."""
    flat = maps.reshape(maps.shape[0], -1)
    order = jnp.argsort(flat, axis=-1, stable=True)
    return jnp.argsort(order, axis=-1, stable=True).astype(jnp.int32)


def _fill_values(images: Array, fill) -> Array:
    if isinstance(fill, str):
        if fill == "mean":
            return jnp.mean(images, axis=(1, 2), keepdims=True)
        if fill == "zeros":
            return jnp.zeros((images.shape[0], 1, 1, images.shape[-1]), images.dtype)
        raise ValueError(f"fill must be 'mean', 'zeros' or a number, got {fill!r}")
    return jnp.full((images.shape[0], 1, 1, images.shape[-1]), float(fill))


@partial(jax.jit, static_argnames=("batch_size",))
def _removal_curve(model_fn, images, labels, ranks, counts, fill, batch_size):
    def one(count):
        keep = (ranks >= count).reshape(images.shape[:3])[..., None]
        perturbed = jnp.where(keep, images, fill)
        logits = model_fn(perturbed)
        return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))

    return jax.lax.map(one, counts, batch_size=batch_size)


def descriptive_accuracy(
    model_fn: Callable[[Array], Array],
    images,
    labels,
    maps,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    fill: str | float = "mean",
    batch_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Accuracy while the least important pixels are removed (paper Fig. 6).

    For each fraction ``f`` the ``round(f * H * W)`` pixels of lowest
    importance of every image (all their channels) are replaced by ``fill``
    and the model's accuracy on the altered images is measured. A slower
    decrease means a more descriptive map. Ties are broken by pixel index.

    Args:
        model_fn: ``model_fn(images (B, H, W, C)) -> logits (B, K)``; pass a
            :class:`jax.tree_util.Partial` to trace its parameters.
        images: ``float32 (B, H, W, C)`` in ``[0, 1]``.
        labels: ``int (B,)`` true classes.
        maps: ``float (B, H, W)`` importance maps, higher = more important
            (convert raw maps with :func:`importance`: ``-CID``, ``|grad|``).
        fractions: strictly increasing fractions of removed pixels in ``[0, 1)``.
        fill: ``"mean"`` (the image's per-channel mean colour), ``"zeros"``
            or a constant intensity.
        batch_size: fractions evaluated together (``None``: one at a time).

    Returns:
        ``(fractions (F,) float64, accuracy (F,) float64 in [0, 1], area)``
        where ``area`` is the trapezoidal area under the curve divided by the
        fraction range (mean accuracy, in ``[0, 1]``; the accuracy itself for
        a single fraction).

    Raises:
        ValueError: malformed images, labels or maps, mismatched shapes,
            fractions outside ``[0, 1)`` or not increasing, unknown fill.
    """
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must have shape (B, H, W, C), got {images.shape}")
    images = images.astype(jnp.float32)
    labels = jnp.asarray(labels)
    if labels.shape != images.shape[:1]:
        raise ValueError(
            f"labels must have shape ({images.shape[0]},), got {labels.shape}"
        )
    maps = _check_maps(maps, images.shape[0], images.shape[1:3])
    frac = _check_fractions(fractions)
    n_pixels = images.shape[1] * images.shape[2]
    counts = jnp.asarray(np.round(frac * n_pixels).astype(np.int32))
    acc = _removal_curve(
        as_model_fn(model_fn),
        images,
        labels.astype(jnp.int32),
        _rank_ascending(maps),
        counts,
        _fill_values(images, fill),
        batch_size,
    )
    acc = np.asarray(acc, dtype=np.float64)
    if frac.size == 1:
        area = float(acc[0])
    else:
        area = float(np.trapezoid(acc, frac) / (frac[-1] - frac[0]))
    return frac, acc, area


@jax.jit
def _recall(maps, masks, k):
    flat = maps.reshape(maps.shape[0], -1)
    inside = masks.reshape(masks.shape[0], -1)
    k = jnp.clip(k, 1, flat.shape[1])
    threshold = jnp.take_along_axis(-jnp.sort(-flat, axis=-1), k[:, None] - 1, axis=1)
    above = flat > threshold
    tied = flat == threshold
    n_above = jnp.sum(above, axis=-1)
    n_tied = jnp.sum(tied, axis=-1)
    hits = (
        jnp.sum(above & inside, axis=-1)
        + (k - n_above) * jnp.sum(tied & inside, axis=-1) / n_tied
    )
    return hits / k


def localization_recall(
    maps, boxes_or_masks, *, top_fraction: float | None = None
) -> Array:
    """Share of the most important pixels that lie in the object (paper Table 2).

    The ``k`` most important pixels are selected, ``k`` = the area of the
    ground-truth box/mask (or ``round(top_fraction * H * W)``), and the
    fraction of them inside the box is returned. Ties at the ``k``-th value are
    shared out in proportion (the expectation under random tie-breaking), so a
    constant map scores exactly the box's share of the image.

    Args:
        maps: ``float (B, H, W)`` importance maps, higher = more important.
        boxes_or_masks: ``int (B, 4)`` boxes ``(y0, x0, y1, x1)`` (half-open)
            or ``bool (B, H, W)`` masks.
        top_fraction: fraction of pixels selected, in ``(0, 1]`` (``None``:
            the box area of each image).

    Returns:
        ``float32 (B,)`` recall in ``[0, 1]``.

    Raises:
        ValueError: mismatched shapes, empty boxes/masks, ``top_fraction``
            outside ``(0, 1]``.
    """
    maps = _check_maps(maps, None, None)
    b, h, w = maps.shape
    gt = jnp.asarray(boxes_or_masks)
    if gt.ndim == 2 and gt.shape[-1] == 4:
        from jax_infodiscard.core.concentration import box_to_mask

        if gt.shape[0] != b:
            raise ValueError(f"got {gt.shape[0]} boxes for {b} maps")
        gt = box_to_mask(gt, (h, w))
    elif gt.shape != (b, h, w):
        raise ValueError(
            f"boxes_or_masks must be boxes (B, 4) or masks (B, H, W) = ({b}, {h}, "
            f"{w}), got shape {gt.shape}"
        )
    gt = gt.astype(bool)
    area = jnp.sum(gt, axis=(1, 2))
    if bool(jnp.any(area == 0)):
        raise ValueError("every box/mask must contain at least one pixel")
    if top_fraction is None:
        k = area.astype(jnp.int32)
    else:
        if not 0.0 < top_fraction <= 1.0:
            raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
        k = jnp.full((b,), max(1, round(top_fraction * h * w)), jnp.int32)
    return _recall(maps, gt, k)
