"""Figures: pixel-wise maps per layer and layer-wise curves.

Maps are shown twice, as the paper does (Fig. 4): *normalised* to ``[0, 1]``
per map (where inside an image a layer discards), and *unnormalised* on one
colour scale shared by every layer (how much each layer discards, comparable
across layers).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from jax_infodiscard.io import write_figure


def _normalise(m: np.ndarray) -> np.ndarray:
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def plot_pixel_maps(
    images,
    maps: Mapping[str, np.ndarray],
    layers: Sequence[str],
    path: str | os.PathLike,
    *,
    masks=None,
    max_images: int = 4,
) -> None:
    """Writes a grid: image (and mask), then each metric's maps per layer.

    Args:
      images: ``(B, H, W, C)`` images in ``[0, 1]``.
      maps: ``{metric name: (L, B, H, W) map in nats}``, e.g.
        ``{"CID": cid.pixel, "RU": ru.pixel}``.
      layers: the ``L`` layer names.
      path: output file (PNG), written atomically.
      masks: optional ``(B, H, W)`` foreground masks (drawn as a contour).
      max_images: rows to draw.
    """
    images = np.asarray(images)
    n = min(max_images, images.shape[0])
    blocks = [
        (name, np.asarray(m), norm)
        for name, m in maps.items()
        for norm in (True, False)
    ]
    cols = 1 + len(layers) * len(blocks)
    fig = Figure(figsize=(1.6 * cols, 1.7 * n + 0.6))
    axes = fig.subplots(n, cols, squeeze=False)
    for b in range(n):
        ax = axes[b, 0]
        ax.imshow(np.clip(images[b], 0, 1))
        if masks is not None:
            ax.contour(
                np.asarray(masks[b]).astype(float),
                levels=[0.5],
                colors="w",
                linewidths=0.8,
            )
        if b == 0:
            ax.set_title("image", fontsize=8)
        col = 1
        for name, m, norm in blocks:
            vmin, vmax = float(m.min()), float(m.max())
            for l, layer in enumerate(layers):
                ax = axes[b, col]
                if norm:
                    im = ax.imshow(_normalise(m[l, b]), cmap="viridis", vmin=0, vmax=1)
                else:
                    im = ax.imshow(m[l, b], cmap="magma", vmin=vmin, vmax=vmax)
                if b == 0:
                    tag = "norm." if norm else "nats"
                    ax.set_title(f"{name} {layer}\n({tag})", fontsize=7)
                col += 1
            if b == n - 1 and not norm:
                fig.colorbar(
                    im,
                    ax=axes[:, col - len(layers) : col].ravel().tolist(),
                    fraction=0.02,
                    label=f"{name} (nats)",
                )
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    write_figure(path, fig, dpi=110, bbox_inches="tight")


def plot_layer_curves(
    layers: Sequence[str],
    curves: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    *,
    title: str = "",
) -> None:
    """Layer-wise curves with one panel per quantity.

    Args:
      layers: ``L`` layer names (x axis, input to output).
      curves: ``{label: (L, B) values}``; the mean over images is drawn with a
        band of one standard deviation. Labels sharing the text before " "
        (e.g. "CID mean", "RU mean") share a panel.
      path: output file (PNG), written atomically.
      title: figure title.
    """
    panels: dict[str, list[str]] = {}
    for label in curves:
        panels.setdefault(label.split(" ", 1)[-1], []).append(label)
    fig = Figure(figsize=(4.2 * len(panels), 3.2))
    axes = fig.subplots(1, len(panels), squeeze=False)
    x = np.arange(len(layers))
    for ax, (panel, labels) in zip(axes[0], panels.items(), strict=True):
        for label in labels:
            v = np.asarray(curves[label], dtype=float)
            mu, sd = v.mean(axis=1), v.std(axis=1)
            ax.plot(x, mu, marker="o", label=label)
            ax.fill_between(x, mu - sd, mu + sd, alpha=0.2)
        ax.set_xticks(x, layers, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(f"{panel} (nats)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    write_figure(path, fig, dpi=110, bbox_inches="tight")
