"""Matplotlib figures of pixel-wise maps and layer-wise curves."""

from jax_infodiscard.plotting.maps import plot_layer_curves, plot_pixel_maps

__all__ = ["plot_layer_curves", "plot_pixel_maps"]
