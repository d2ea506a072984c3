"""Matplotlib figures of pixel-wise maps and layer-wise curves.

:func:`~jax_infodiscard.plotting.overlay.show` draws one map over its
image in one call; the figures of the jobs (every layer and image, curves
over layers) are in :mod:`jax_infodiscard.plotting.maps`.
"""

from jax_infodiscard.plotting.maps import (
    normalise,
    pixel_maps_figure,
    plot_layer_curves,
    plot_pixel_maps,
)
from jax_infodiscard.plotting.overlay import show

__all__ = [
    "normalise",
    "pixel_maps_figure",
    "plot_layer_curves",
    "plot_pixel_maps",
    "show",
]
