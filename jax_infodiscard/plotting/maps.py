"""Figures: pixel-wise maps per layer and layer-wise curves.

Maps are shown twice, as the paper does (Fig. 4): *normalised* to ``[0, 1]``
per map (where inside an image a layer discards), and *unnormalised* on one
colour scale shared by every layer of a metric (how much each layer
discards, comparable across layers). Every block of maps has its own colour
bar in a column of its own, so that no colour bar covers a map.

Maps that should not be read (a solve that did not meet its budget, or an RU
decoder that learned nothing) can be passed as ``unreliable``: they are drawn
in grey with a red frame and the reason written across them.

Both functions return the :class:`matplotlib.figure.Figure` they wrote, so
that notebooks can show it and tests can inspect its layout.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Collection, Mapping, Sequence

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from jax_infodiscard.io import write_figure

__all__ = ["normalise", "pixel_maps_figure", "plot_layer_curves", "plot_pixel_maps"]

_MAP_CMAP = {True: "viridis", False: "magma"}
_FLAG_COLOR = "crimson"
_PLAIN = FuncFormatter(lambda v, _: f"{v:g}")


# Minor ticks of a log axis sit at m x 10^k, m = 2..9. Which m get a label:
# the sparsest of these sets that still labels three ticks in view, among
# those whose labels stay at least _MIN_GAP of the axis height apart.
_MINOR_TIERS = ((), (2, 5), (2, 3, 5, 7), tuple(range(2, 10)))
_MIN_GAP = 0.08


def _minor_tier(lo: float, hi: float) -> tuple[int, ...]:
    """The mantissas of the minor ticks to label on a log axis ``[lo, hi]``.

    >>> _minor_tier(0.3, 150.0), _minor_tier(0.5, 9.5), _minor_tier(0.8, 1.3)
    ((), (2, 5), (2, 3, 4, 5, 6, 7, 8, 9))
    """
    decades = float(np.log10(hi / lo))
    powers = range(int(np.floor(np.log10(lo))) - 1, int(np.ceil(np.log10(hi))) + 1)

    def shown(tier) -> int:
        marks = [m * 10.0**k for k in powers for m in (1, *tier)]
        return sum(lo <= v <= hi for v in marks)

    def gap(tier) -> float:
        return float(np.diff(np.log10([1, *tier, 10])).min())

    allowed = [t for t in _MINOR_TIERS if gap(t) >= _MIN_GAP * decades]
    return next((t for t in allowed if shown(t) >= 3), allowed[-1])


def _log_minor_labels(axis) -> FuncFormatter:
    """Plain labels for some minor ticks of a log axis, never crowded.

    Labelling every minor tick (as a plain formatter does) stacks their
    labels near each decade once the axis spans a decade or more ("0.9 0.8
    0.7 0.6"); here only the mantissas :func:`_minor_tier` picks for the
    axis' current range are labelled.

    >>> from matplotlib.figure import Figure
    >>> ax = Figure().subplots()
    >>> ax.set_yscale("log"); ax.set_ylim(0.5, 9.5)
    (0.5, 9.5)
    >>> fmt = _log_minor_labels(ax.yaxis)
    >>> [fmt(v, 0) for v in (0.5, 0.6, 2.0, 3.0)]
    ['0.5', '', '2', '']
    """

    def label(value: float, _pos) -> str:
        lo, hi = sorted(axis.get_view_interval())
        if value <= 0 or lo <= 0:
            return ""
        mantissa = round(value / 10 ** np.floor(np.log10(value) + 1e-9))
        return f"{value:g}" if mantissa in _minor_tier(lo, hi) else ""

    return FuncFormatter(label)


def normalise(m: np.ndarray) -> np.ndarray:
    """Scales one map to ``[0, 1]`` (its minimum to 0, its maximum to 1).

    A constant map becomes all zeros, NaN entries stay NaN.

    >>> normalise(np.array([[1.0, 3.0], [2.0, 1.0]])).tolist()
    [[0.0, 1.0], [0.5, 0.0]]
    """
    m = np.asarray(m, dtype=float)
    if np.isnan(m).all():
        return m
    lo, hi = float(np.nanmin(m)), float(np.nanmax(m))
    return (m - lo) / (hi - lo) if hi > lo else np.where(np.isnan(m), m, 0.0)


def _colour_norm(scale: tuple[float, float], norm: bool) -> Normalize:
    return Normalize(0.0, 1.0) if norm else Normalize(*scale)


def _row_label(b, labels, predictions, class_names) -> tuple[str, str]:
    """``(text, colour)`` under image ``b``: true and predicted class."""

    def name(c):
        c = int(c)
        return class_names[c] if class_names is not None else str(c)

    parts, colour = [], "black"
    if labels is not None:
        parts.append(f"true: {name(labels[b])}")
    if predictions is not None:
        parts.append(f"pred: {name(predictions[b])}")
        if labels is not None and int(labels[b]) != int(predictions[b]):
            colour = _FLAG_COLOR
    return "\n".join(parts), colour


def pixel_maps_figure(
    images,
    maps: Mapping[str, np.ndarray],
    layers: Sequence[str],
    *,
    masks=None,
    max_images: int | None = None,
    labels=None,
    predictions=None,
    class_names: Sequence[str] | None = None,
    unreliable: Mapping[str, np.ndarray] | None = None,
    column_notes: Mapping[str, Sequence[str]] | None = None,
    caption: str = "",
) -> Figure:
    """A grid: image (and mask), then each metric's maps per layer.

    Per metric two blocks of ``L`` columns: maps normalised per map (one
    colour bar, 0 = the map's minimum, 1 = its maximum) and maps in nats on
    one scale shared by every layer and image of that metric (one colour bar
    in nats). Each colour bar has a grid column of its own.

    Args:
      images: ``(B, H, W, C)`` images in ``[0, 1]``.
      maps: ``{metric name: (L, B, H, W) map in nats}``, e.g.
        ``{"CID": cid.pixel, "RU": ru.pixel}``; NaN maps are ones that
        were not computed (give their reason in ``unreliable``).
      layers: the ``L`` layer names.
      masks: optional ``(B, H, W)`` foreground masks (drawn as a contour).
      max_images: rows to draw (``None``: every image).
      labels: optional ``(B,)`` true classes, written under each image.
      predictions: optional ``(B,)`` predicted classes, written under each
        image (in red when they differ from ``labels``).
      class_names: names of the classes, indexed by class.
      unreliable: ``{metric name: (L, B) strings}``; a non-empty string marks
        that map as not to be read (drawn in grey, red frame) and is written
        across it as the reason, e.g. ``"not converged"``.
      column_notes: ``{metric name: L strings}`` added under the column
        titles (e.g. per-layer diagnostics).
      caption: text under the grid (what, how, which settings).

    Returns:
      The figure (not shown; pass it to ``display`` in a notebook).

    Raises:
      ValueError: a map whose leading shape is not ``(L, B)`` or whose
        spatial shape differs from the images'.
    """
    images = np.asarray(images)
    n_all = images.shape[0]
    n = n_all if max_images is None else min(max_images, n_all)
    arrays = _checked_maps(images, maps, layers)
    unreliable = {k: np.asarray(v, dtype=object) for k, v in (unreliable or {}).items()}
    blocks = [(name, norm) for name in arrays for norm in (True, False)]
    widths, kinds = _grid_columns(blocks, len(layers))
    fig, grid, (left, bottom, fig_w, fig_h) = _figure_grid(
        n, widths, bool(column_notes), caption
    )
    # NaN marks maps that were not computed (e.g. RU at a layer whose decoder
    # learned nothing); they are drawn blank with their reason.
    scales = {
        name: (float(np.nanmin(m)), float(np.nanmax(m)))
        if not np.isnan(m).all()
        else (0.0, 1.0)
        for name, m in arrays.items()
    }
    for col, kind in enumerate(kinds):
        if kind[0] == "gap":
            continue
        if kind[0] == "cbar":
            _, name, norm = kind
            _colour_bar(fig, fig.add_subplot(grid[:, col]), name, norm, scales[name])
        elif kind[0] == "image":
            cells = _column_cells(fig, grid, col, n)
            _image_column(cells, images, masks, labels, predictions, class_names)
        else:
            _, name, norm, l = kind
            notes = (column_notes or {}).get(name)
            title = f"{name} {layers[l]} ({'norm.' if norm else 'nats'})"
            if notes is not None:
                title += f"\n{notes[l]}"
            reasons = unreliable.get(name)
            for b, ax in enumerate(_column_cells(fig, grid, col, n)):
                reason = "" if reasons is None else str(reasons[l, b] or "")
                _map_cell(ax, arrays[name][l, b], norm, scales[name], reason)
                if b == 0:
                    ax.set_title(title, fontsize=6.5)
    if caption:
        fig.text(
            left / fig_w,
            (bottom - 0.4) / fig_h,
            caption,
            ha="left",
            va="top",
            fontsize=7.5,
        )
    return fig


def _column_cells(fig, grid, col: int, n: int):
    """The ``n`` cells of grid column ``col``, top to bottom, without ticks
    (each axes is added as it is yielded)."""
    for b in range(n):
        ax = fig.add_subplot(grid[b, col])
        ax.set_xticks([])
        ax.set_yticks([])
        yield ax


def _image_column(cells, images, masks, labels, predictions, class_names) -> None:
    """The image column: each row's image ``(H, W, C)``, its mask outline and
    its label line (true and predicted class)."""
    for b, ax in enumerate(cells):
        masks_b = None if masks is None else masks[b]
        _image_cell(ax, images[b], masks_b, b == 0)
        text, colour = _row_label(b, labels, predictions, class_names)
        ax.set_xlabel(text, fontsize=6.5, color=colour, labelpad=2)


def _checked_maps(
    images: np.ndarray, maps: Mapping[str, np.ndarray], layers: Sequence[str]
) -> dict[str, np.ndarray]:
    """``{name: (L, B, H, W) float map}`` (channels averaged); checks shapes."""
    n_all, num_layers = images.shape[0], len(layers)
    arrays = {}
    for name, m in maps.items():
        m = np.asarray(m, dtype=float)
        if m.ndim == 5:  # per-channel maps: mean over channels
            m = m.mean(axis=-1)
        if m.shape[:2] != (num_layers, n_all) or m.shape[2:] != images.shape[1:3]:
            raise ValueError(
                f"maps[{name!r}] has shape {m.shape}; expected (layers, images, H, W)"
                f" = {(num_layers, n_all, *images.shape[1:3])}"
            )
        arrays[name] = m
    return arrays


def _grid_columns(blocks, num_layers: int) -> tuple[list[float], list[tuple]]:
    """Grid columns' width ratios and kinds: image | per block: maps, bar, gap."""
    widths, kinds = [1.0], [("image",)]
    for bi, (name, norm) in enumerate(blocks):
        widths += [1.0] * num_layers + [0.07]
        kinds += [("map", name, norm, l) for l in range(num_layers)]
        kinds.append(("cbar", name, norm))
        if bi < len(blocks) - 1:
            widths.append(0.55)
            kinds.append(("gap",))
    return widths, kinds


def _figure_grid(n: int, widths: list[float], notes: bool, caption: str):
    """The figure and its grid of ``n`` rows; also ``(left, bottom, w, h)``.

    Sizes in inches: a map is ``side`` wide and high; room for the titles
    above, the class labels under each image, and the caption.
    """
    side, wspace, hspace = 1.1, 0.08, 0.38
    left, right, top = 0.1, 0.9, 0.5 + 0.12 * notes
    caption_lines = caption.count("\n") + 1 if caption else 0
    bottom = 0.45 + 0.14 * caption_lines
    grid_w = side * sum(widths) + wspace * side * sum(widths) / len(widths) * (
        len(widths) - 1
    )
    grid_h = side * n + hspace * side * (n - 1)
    fig_w, fig_h = left + grid_w + right, bottom + grid_h + top
    fig = Figure(figsize=(fig_w, fig_h))
    grid = fig.add_gridspec(
        n,
        len(widths),
        width_ratios=widths,
        wspace=wspace,
        hspace=hspace,
        left=left / fig_w,
        right=1 - right / fig_w,
        bottom=bottom / fig_h,
        top=1 - top / fig_h,
    )
    return fig, grid, (left, bottom, fig_w, fig_h)


def _colour_bar(fig, cax, name: str, norm: bool, scale: tuple[float, float]):
    """The colour bar of a block: normalised maps or one scale in nats."""
    mappable = ScalarMappable(_colour_norm(scale, norm), _MAP_CMAP[norm])
    cb = fig.colorbar(mappable, cax=cax)
    cb.ax.tick_params(labelsize=6)
    if norm:
        cb.set_ticks([0, 0.5, 1])
        cb.set_label(
            f"{name}, normalised per map\n0 = the map's min, 1 = its max",
            fontsize=7,
        )
    else:
        cb.set_label(f"{name} (nats per pixel), one scale", fontsize=7)


def _image_cell(ax, image: np.ndarray, mask, first_row: bool) -> None:
    """An image ``(H, W, C)`` with its mask ``(H, W)`` outlined (if any)."""
    ax.imshow(np.clip(image, 0, 1))
    if mask is not None:
        ax.contour(
            np.asarray(mask).astype(float),
            levels=[0.5],
            colors="w",
            linewidths=0.8,
        )
    if first_row:
        ax.set_title("image\n(mask outline)", fontsize=7)


def _map_cell(ax, m: np.ndarray, norm: bool, scale, reason: str) -> None:
    """One ``(H, W)`` map; with a ``reason`` greyed out, framed and labelled."""
    shown = normalise(m) if norm else m
    ax.imshow(
        shown,
        cmap="gray" if reason else _MAP_CMAP[norm],
        norm=_colour_norm(scale, norm),
        alpha=0.45 if reason else None,
    )
    if reason:
        for spine in ax.spines.values():
            spine.set_edgecolor(_FLAG_COLOR)
            spine.set_linewidth(1.5)
        _flag_text(ax, textwrap.fill(reason, 16), fontsize=5.5)


def _flag_text(ax, text: str, **kwargs) -> None:
    """``text`` across the middle of ``ax``, in the flag colour on white
    (``kwargs``: more options of ``ax.text``)."""
    ax.text(
        0.5,
        0.5,
        text,
        transform=ax.transAxes,
        ha="center",
        va="center",
        color=_FLAG_COLOR,
        bbox=dict(facecolor="white", alpha=0.8, lw=0, pad=1),
        **kwargs,
    )


def plot_pixel_maps(
    images,
    maps: Mapping[str, np.ndarray],
    layers: Sequence[str],
    path: str | os.PathLike,
    *,
    masks=None,
    max_images: int | None = None,
    **kwargs,
) -> Figure:
    """Writes :func:`pixel_maps_figure` to ``path`` (PNG, atomically).

    Args:
      images: ``(B, H, W, C)`` images in ``[0, 1]``.
      maps: ``{metric name: (L, B, H, W) map in nats}``.
      layers: the ``L`` layer names.
      path: output file.
      masks: optional ``(B, H, W)`` foreground masks.
      max_images: rows to draw (``None``: every image).
      **kwargs: ``labels``, ``predictions``, ``class_names``, ``unreliable``,
        ``column_notes``, ``caption`` of :func:`pixel_maps_figure`.

    Returns:
      The figure written.
    """
    fig = pixel_maps_figure(
        images, maps, layers, masks=masks, max_images=max_images, **kwargs
    )
    write_figure(path, fig, dpi=110, bbox_inches="tight")
    return fig


def plot_layer_curves(
    layers: Sequence[str],
    curves: Mapping[str, np.ndarray],
    path: str | os.PathLike | None,
    *,
    title: str = "",
    caption: str = "",
    ylabels: Mapping[str, str] | None = None,
    log_panels: Collection[str] = (),
    reference: Mapping[str, float] | None = None,
    unreliable: Mapping[str, np.ndarray] | None = None,
) -> Figure:
    """Layer-wise curves with one panel per quantity.

    Each curve is the mean over images with a shaded band of plus or minus
    one standard deviation over images (said in each panel's legend).

    Args:
      layers: ``L`` layer names (x axis, input to output).
      curves: ``{label: (L, B) values}``. Labels sharing the text after the
        first space (e.g. "CID mean", "RU mean") share a panel.
      path: output file (PNG), written atomically; ``None`` writes nothing.
      title: figure title.
      caption: text under the panels.
      ylabels: ``{panel: y-axis label}`` (default ``"<panel> (nats)"``).
      log_panels: panels drawn with a logarithmic y axis.
      reference: ``{panel: value}`` drawn as a dashed horizontal line (e.g.
        1 for linearity, the linear regime).
      unreliable: ``{label: (L,) bool}``: layers whose points are drawn as
        open markers (e.g. solves that did not converge); the legend says so.

    Returns:
      The figure.
    """
    panels: dict[str, list[str]] = {}
    for label in curves:
        panels.setdefault(label.split(" ", 1)[-1], []).append(label)
    fig = Figure(figsize=(4.2 * len(panels), 3.4))
    axes = fig.subplots(1, len(panels), squeeze=False)
    x = np.arange(len(layers))
    any_open = False
    for ax, (panel, labels) in zip(axes[0], panels.items(), strict=True):
        num_images = 0
        for label in labels:
            v = np.asarray(curves[label], dtype=float)
            num_images = v.shape[1]
            mu, sd = v.mean(axis=1), v.std(axis=1)
            (line,) = ax.plot(x, mu, label=label)
            bad = np.zeros(len(layers), bool)
            if unreliable and label in unreliable:
                bad = np.asarray(unreliable[label], bool)
            any_open |= bool(bad.any())
            ax.plot(x[~bad], mu[~bad], ls="", marker="o", color=line.get_color())
            ax.plot(
                x[bad], mu[bad], ls="", marker="o", mfc="white", color=line.get_color()
            )
            lo, hi = mu - sd, mu + sd
            if panel in log_panels:
                lo = np.maximum(lo, mu / 10)
            ax.fill_between(x, lo, hi, alpha=0.2, color=line.get_color())
        if reference and panel in reference:
            ax.axhline(reference[panel], color="grey", ls="--", lw=0.8)
        if panel in log_panels:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(_PLAIN)
            ax.yaxis.set_minor_formatter(_log_minor_labels(ax.yaxis))
        ax.set_xticks(x, layers, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel((ylabels or {}).get(panel, f"{panel} (nats)"))
        ax.grid(alpha=0.3)
        ax.legend(
            fontsize=7,
            title=f"line: mean over {num_images} images\nband: ±1 sd over images",
            title_fontsize=7,
        )
    if title:
        fig.suptitle(title)
    notes = caption
    if any_open:
        open_note = "Open markers: layers whose solves did not converge or whose "
        open_note += "RU decoder learned nothing (do not read them)."
        notes = f"{caption}\n{open_note}" if caption else open_note
    fig.tight_layout()
    if notes:
        fig.text(0.01, 0.0, notes, ha="left", va="top", fontsize=7.5)
    if path is not None:
        write_figure(path, fig, dpi=110, bbox_inches="tight")
    return fig
