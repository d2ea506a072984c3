"""Concentration (paper Eq. 5) and foreground masks from boxes.

Both functions validate their inputs through :mod:`jax_infodiscard.validation`.
Called on concrete arrays (the usual case, also when they are called from
Python between compiled steps), every bad input raises a ``ValueError`` that
names the argument. Inside ``jit``/``vmap`` the values are tracers that cannot
be inspected: shapes and dtypes are still checked at trace time, and the value
checks (NaN in the map, masks with only one side, boxes outside the image)
become :func:`jax.experimental.checkify.debug_check` calls. They raise when
the caller wraps the computation in :func:`jax.experimental.checkify.checkify`
and are skipped under plain ``jit``, where :func:`concentration` returns NaN
for an image whose map or mask failed a check instead. Raising from inside a
plain ``jit`` would need a host callback (a device-to-host sync and an opaque
runtime error), so NaN is the documented result there.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jax_infodiscard import validation
from jax_infodiscard.types import Array

__all__ = ["box_to_mask", "concentration"]


def box_to_mask(boxes, image_shape: tuple[int, int]) -> Array:
    """Boolean foreground masks from boxes.

    Args:
      boxes: ``(..., 4)`` integer boxes ``(y0, x0, y1, x1)`` in pixels,
        half-open (rows ``y0 <= y < y1``, columns ``x0 <= x < x1``), non-empty
        and inside the image: ``0 <= y0 < y1 <= H``, ``0 <= x0 < x1 <= W``.
        Floats are accepted when they are whole numbers.
      image_shape: ``(H, W)``, positive integers.

    Returns:
      ``(..., H, W)`` bool.

    Raises:
      TypeError: ``boxes`` is not an array or ``image_shape`` not a pair.
      ValueError: ``image_shape`` with other than two entries (e.g.
        ``(H, W, C)``), boxes not of shape ``(..., 4)``, or NaN, fractional,
        inverted, empty or out-of-image boxes (traced boxes: see the module
        docstring; an invalid traced box gives a clipped or empty mask).

    >>> box_to_mask(jnp.array([1, 0, 3, 2]), (4, 3)).astype(int).tolist()
    [[0, 0, 0], [1, 1, 0], [1, 1, 0], [0, 0, 0]]
    """
    h, w = validation.check_image_shape(image_shape)
    boxes = validation.check_boxes(boxes, (h, w))
    ys = jnp.arange(h)[:, None]
    xs = jnp.arange(w)[None, :]
    b = boxes[..., None, None, :]
    return (ys >= b[..., 0]) & (ys < b[..., 2]) & (xs >= b[..., 1]) & (xs < b[..., 3])


def concentration(pixel_map, foreground_mask) -> Array:
    """Background mean minus foreground mean of a pixel map (paper Eq. 5).

    Args:
      pixel_map: ``(..., H, W)`` pixel-wise CID or RU (nats), finite. A
        per-channel map should be averaged over channels first.
      foreground_mask: ``(..., H, W)`` boolean (or integer 0/1) masks
        broadcastable against ``pixel_map`` (``True`` = object), e.g. from
        :func:`box_to_mask`; each needs foreground and background pixels.
        Floating-point masks are refused (threshold them yourself).

    Returns:
      ``pixel_map.shape[:-2]`` (broadcast) in nats; positive when the
      background is discarded more than the foreground. Under plain ``jit``,
      NaN for an image whose map is not finite or whose mask is one-sided or
      holds values other than 0/1 (see the module docstring).

    Raises:
      TypeError: an argument that is not an array.
      ValueError: shapes that do not broadcast, a float or non-0/1 mask, a
        NaN/inf map, or a mask that is all foreground or all background for
        some image.

    >>> mask = box_to_mask(jnp.array([0, 0, 1, 2]), (2, 2))
    >>> float(concentration(jnp.array([[0.0, 0.0], [1.0, 3.0]]), mask))
    2.0
    """
    pixel_map = validation.check_pixel_map(pixel_map, "pixel_map")
    raw_mask = foreground_mask
    mask = validation.check_mask(foreground_mask, "foreground_mask")
    if mask.shape[-2:] != pixel_map.shape[-2:]:
        raise ValueError(
            f"foreground_mask spatial shape {mask.shape[-2:]} does not match "
            f"pixel_map {pixel_map.shape[-2:]}"
        )
    try:
        shape = np.broadcast_shapes(mask.shape, pixel_map.shape)
    except ValueError as e:
        raise ValueError(
            f"foreground_mask shape {mask.shape} does not broadcast against "
            f"pixel_map {pixel_map.shape}"
        ) from e
    validation.check_mask_split(mask, "foreground_mask")
    mask = jnp.broadcast_to(mask, shape)
    fg = jnp.sum(jnp.where(mask, pixel_map, 0.0), axis=(-2, -1))
    bg = jnp.sum(jnp.where(mask, 0.0, pixel_map), axis=(-2, -1))
    n_fg = jnp.sum(mask, axis=(-2, -1))
    n_bg = mask.shape[-2] * mask.shape[-1] - n_fg
    # A one-sided mask gives 0/0 = NaN by itself; NaN maps propagate.
    out = bg / n_bg - fg / n_fg
    if validation.is_traced(raw_mask):
        ok = validation.mask_values_ok(jnp.asarray(raw_mask))
        out = jnp.where(jnp.broadcast_to(ok, out.shape), out, jnp.nan)
    return out
