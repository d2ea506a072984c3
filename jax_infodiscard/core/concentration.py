"""Concentration (paper Eq. 5) and foreground masks from boxes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jax_infodiscard.types import Array


def box_to_mask(boxes, image_shape: tuple[int, int]) -> Array:
    """Boolean foreground masks from boxes.

    Args:
      boxes: ``(..., 4)`` integer boxes ``(y0, x0, y1, x1)`` in pixels,
        half-open (rows ``y0 <= y < y1``, columns ``x0 <= x < x1``).
      image_shape: ``(H, W)``.

    Returns:
      ``(..., H, W)`` bool.

    >>> box_to_mask(jnp.array([1, 0, 3, 2]), (4, 3)).astype(int).tolist()
    [[0, 0, 0], [1, 1, 0], [1, 1, 0], [0, 0, 0]]
    """
    boxes = jnp.asarray(boxes)
    if boxes.shape[-1:] != (4,):
        raise ValueError(f"boxes must have shape (..., 4), got {boxes.shape}")
    h, w = image_shape
    ys = jnp.arange(h)[:, None]
    xs = jnp.arange(w)[None, :]
    b = boxes[..., None, None, :]
    return (ys >= b[..., 0]) & (ys < b[..., 2]) & (xs >= b[..., 1]) & (xs < b[..., 3])


def concentration(pixel_map, foreground_mask) -> Array:
    """Background mean minus foreground mean of a pixel map (paper Eq. 5).

    Args:
      pixel_map: ``(..., H, W)`` pixel-wise CID or RU (nats). A per-channel map
        should be averaged over channels first.
      foreground_mask: boolean ``(..., H, W)`` broadcastable against
        ``pixel_map`` (``True`` = object), e.g. from :func:`box_to_mask`.

    Returns:
      ``pixel_map.shape[:-2]`` (broadcast) in nats; positive when the
      background is discarded more than the foreground.

    Raises:
      ValueError: shapes that do not broadcast, or a mask that is all
        foreground or all background for some image.
    """
    pixel_map = jnp.asarray(pixel_map)
    mask = jnp.asarray(foreground_mask)
    if pixel_map.ndim < 2 or mask.ndim < 2:
        raise ValueError("pixel_map and foreground_mask need (H, W) trailing axes")
    if mask.shape[-2:] != pixel_map.shape[-2:]:
        raise ValueError(
            f"mask spatial shape {mask.shape[-2:]} does not match pixel map "
            f"{pixel_map.shape[-2:]}"
        )
    try:
        np.broadcast_shapes(mask.shape, pixel_map.shape)
    except ValueError as e:
        raise ValueError(
            f"mask shape {mask.shape} does not broadcast against pixel map "
            f"{pixel_map.shape}"
        ) from e
    mask = mask.astype(bool)
    if not isinstance(mask, jax.core.Tracer):
        count = np.asarray(mask.sum(axis=(-2, -1)))
        size = mask.shape[-2] * mask.shape[-1]
        if np.any(count == 0):
            raise ValueError("foreground mask is all background for some image")
        if np.any(count == size):
            raise ValueError("foreground mask is all foreground for some image")
    mask = jnp.broadcast_to(mask, jnp.broadcast_shapes(mask.shape, pixel_map.shape))
    fg = jnp.sum(jnp.where(mask, pixel_map, 0.0), axis=(-2, -1))
    bg = jnp.sum(jnp.where(mask, 0.0, pixel_map), axis=(-2, -1))
    n_fg = jnp.sum(mask, axis=(-2, -1))
    n_bg = mask.shape[-2] * mask.shape[-1] - n_fg
    return bg / n_bg - fg / n_fg
