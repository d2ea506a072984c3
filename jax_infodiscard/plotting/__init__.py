"""Matplotlib figures of pixel-wise maps and layer-wise curves."""

from jax_infodiscard.plotting.maps import (
    normalise,
    pixel_maps_figure,
    plot_layer_curves,
    plot_pixel_maps,
)

__all__ = ["normalise", "pixel_maps_figure", "plot_layer_curves", "plot_pixel_maps"]
