"""One map over its image in one call: :func:`show`.

The quick look at a result, as captum's ``visualize_image_attr`` gives for
an attribution: the image, and one layer's pixel map drawn over a grey copy
of it with a colour bar that says what the colours mean. The full grids of
every layer and image are :func:`~jax_infodiscard.plotting.maps.pixel_maps_figure`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from jax_infodiscard.plotting.maps import _MAP_CMAP, _flag_text, normalise

__all__ = ["show"]


def _pick_image(image: Any, index: int) -> np.ndarray:
    """``(H, W, C)`` from one image or a batch ``(B, H, W, C)``."""
    image = np.asarray(image, dtype=float)
    if image.ndim == 4:
        if not 0 <= index < image.shape[0]:
            raise ValueError(
                f"index={index} is outside the {image.shape[0]} images of image"
            )
        image = image[index]
    if image.ndim != 3:
        raise ValueError(
            f"image must be (H, W, C) or (B, H, W, C), got shape {image.shape}"
        )
    return np.clip(image, 0, 1)


def _pick_map(result: Any, layer: str | None, index: int) -> tuple[np.ndarray, str]:
    """``((H, W) map in nats, why it should not be read or "")``."""
    names = tuple(getattr(result, "layers", ()))
    if not names:
        raise TypeError(
            "result must be a CIDResult or RUResult (with .pixel and .layers), "
            f"got {type(result).__name__}"
        )
    if layer is None:
        if len(names) != 1:
            raise ValueError(f"give the layer to show, one of {', '.join(names)}")
        layer = names[0]
    if layer not in names:
        raise ValueError(f"unknown layer {layer!r}; the result has {', '.join(names)}")
    l = names.index(layer)
    pixel = np.asarray(result.pixel, dtype=float)
    if not 0 <= index < pixel.shape[1]:
        raise ValueError(f"index={index} is outside the {pixel.shape[1]} images")
    m = pixel[l, index]
    if m.ndim == 3:  # per-channel maps: their mean over channels
        m = m.mean(axis=-1)
    converged = getattr(result, "converged", None)
    reason = ""
    if converged is not None and not bool(np.asarray(converged)[l, index]):
        reason = "not converged: do not read this map"
    if np.isnan(m).all():
        reason = "not computed"
    return m, reason


def show(
    image: Any,
    result: Any,
    layer: str | None = None,
    *,
    index: int = 0,
    normalised: bool = True,
    alpha: float = 0.6,
    title: str = "",
) -> Figure:
    """The image and one layer's pixel map over it, side by side.

    Args:
        image: the image ``(H, W, C)`` in ``[0, 1]``, or the batch
            ``(B, H, W, C)`` the result was computed on (``index`` picks).
        result: a :class:`~jax_infodiscard.core.results.CIDResult` or
            :class:`~jax_infodiscard.core.results.RUResult` (``pixel``
            ``(L, B, H, W)`` in nats, ``layers``).
        layer: the layer to show (``None``: the result's only layer).
        index: which image of the batch.
        normalised: scale the map to ``[0, 1]`` (0 = its minimum, 1 = its
            maximum: where inside the image the layer discards), or keep
            nats (how much).
        alpha: opacity of the map over the grey image, in ``[0, 1]``.
        title: figure title (default none: the panels name the image, the
            metric and the layer).

    Returns:
        The :class:`matplotlib.figure.Figure` (a notebook shows it when it
        is a cell's value; ``fig.savefig(path)`` writes it). A map whose
        solve did not converge is drawn in grey with the reason across it.

    Raises:
        ValueError: an unknown layer (the message lists the result's), an
            index outside the batch, or an image whose size is not the map's.
        TypeError: ``result`` has no ``pixel`` maps and ``layers``.

    Example:
        ``show(images, jid.cid(fn, images, key), "conv1", index=2)``; here
        with a stand-in for the result:

        >>> import types
        >>> maps = np.random.default_rng(0).normal(size=(1, 2, 8, 8))
        >>> res = types.SimpleNamespace(layers=("conv1",), pixel=maps)
        >>> fig = show(np.zeros((2, 8, 8, 3)), res, "conv1", index=1)
        >>> [ax.get_title() for ax in fig.axes[:2]]
        ['image 1', 'CID conv1, normalised']
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    picture = _pick_image(image, index)
    m, reason = _pick_map(result, layer, index)
    layer = layer or result.layers[0]
    if m.shape != picture.shape[:2]:
        raise ValueError(
            f"the map of {layer!r} is {m.shape} pixels but the image is "
            f"{picture.shape[:2]}"
        )
    metric = "RU" if type(result).__name__.startswith("RU") else "CID"
    shown = normalise(m) if normalised else m
    grey = picture.mean(axis=-1)

    fig = Figure(figsize=(6.4, 3.0))
    ax_image, ax_map, cax = fig.subplots(
        1, 3, gridspec_kw={"width_ratios": [1, 1, 0.06]}
    )
    if picture.shape[-1] == 3:
        ax_image.imshow(picture)
    else:
        ax_image.imshow(grey, cmap="gray", vmin=0.0, vmax=1.0)
    ax_image.set_title(f"image {index}", fontsize=9)
    ax_map.imshow(grey, cmap="gray", vmin=0.0, vmax=1.0)
    drawn = ax_map.imshow(
        shown,
        cmap="gray" if reason else _MAP_CMAP[normalised],
        alpha=float(alpha),
        vmin=0.0 if normalised else None,
        vmax=1.0 if normalised else None,
    )
    ax_map.set_title(
        f"{metric} {layer}, {'normalised' if normalised else 'nats'}", fontsize=9
    )
    if reason:
        _flag_text(ax_map, reason, wrap=True, fontsize=7)
    for ax in (ax_image, ax_map):
        ax.set_xticks([])
        ax.set_yticks([])
    bar = fig.colorbar(drawn, cax=cax)
    bar.ax.tick_params(labelsize=7)
    bar.set_label(
        f"{metric}: 0 = the map's min, 1 = its max"
        if normalised
        else f"{metric} (nats per pixel)",
        fontsize=8,
    )
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
