"""The figures of an analysis: layer-wise curves of the compared networks and
their per-image differences (matplotlib, written atomically into the run
folder)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from jax_infodiscard.experiments.analyses.measuring import Measured
from jax_infodiscard.experiments.rundir import RunFolder

__all__ = [
    "curve_panels",
    "difference_panels",
    "plot_curves",
]


def _axis(ax, layers: Sequence[str], same: bool):
    if same:
        ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=7)
    else:
        ax.set_xlabel("relative depth (layer index / last index)")


def plot_curves(
    folder: RunFolder,
    name: str,
    panels: Mapping[str, Mapping[str, tuple[Sequence[str], np.ndarray]]],
    *,
    title: str = "",
    ylabels: Mapping[str, str] | None = None,
    zero_line: Sequence[str] = (),
) -> None:
    """Layer-wise curves, one panel per quantity, one line per network.

    Args:
      folder: the run folder (the figure is written atomically).
      name: file name (``.png``).
      panels: ``{panel title: {line label: (layers, values (L, B))}}``; the
        mean over images is drawn with a band of one standard error. Lines
        of a panel with different layer lists are drawn against relative
        depth.
      title: figure title.
      ylabels: y-axis label per panel (default ``"nats"``).
      zero_line: panels that get a horizontal line at 0 (differences).
    """
    panels = {k: v for k, v in panels.items() if v}
    fig = Figure(figsize=(4.3 * len(panels), 3.4))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (panel, lines) in zip(axes, panels.items(), strict=True):
        layer_lists = {tuple(layers) for layers, _ in lines.values()}
        same = len(layer_lists) == 1
        for label, (layers, values) in lines.items():
            v = np.asarray(values, float)
            with warnings.catch_warnings():  # all-NaN layers: RU not solved
                warnings.simplefilter("ignore", RuntimeWarning)
                mu = np.nanmean(v, axis=1)
                n = np.maximum(np.sum(np.isfinite(v), axis=1), 1)
                ddof = 1 if v.shape[1] > 1 else 0
                se = np.nanstd(v, axis=1, ddof=ddof) / np.sqrt(n)
            x = (
                np.arange(len(layers))
                if same
                else np.arange(len(layers)) / max(len(layers) - 1, 1)
            )
            ax.plot(x, mu, marker="o", ms=3, label=label)
            ax.fill_between(x, mu - se, mu + se, alpha=0.2)
        if panel in zero_line:
            ax.axhline(0.0, color="k", lw=0.8)
        _axis(ax, next(iter(layer_lists)), same)
        ax.set_title(panel, fontsize=9)
        ax.set_ylabel((ylabels or {}).get(panel, "nats"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    folder.write_figure(name, fig, dpi=110, bbox_inches="tight")


def difference_panels(
    base: Measured,
    others: Sequence[Measured],
    quantities: Sequence[str] = ("cid", "concentration", "ru"),
    labels: Mapping[str, str] | None = None,
) -> dict[str, dict[str, tuple[Sequence[str], np.ndarray]]]:
    """Panels of per-image differences ``other - base`` on shared layers."""
    names = {"cid": "ΔCID", "concentration": "Δconcentration", "ru": "ΔRU"}
    names.update(labels or {})
    panels: dict[str, dict] = {}
    for q in quantities:
        lines = {}
        for m in others:
            if m.values(q) is None or base.values(q) is None:
                continue
            shared = [x for x in m.layers if x in base.layers]
            diff = np.stack([m.at(q, x) - base.at(q, x) for x in shared])
            lines[m.name] = (shared, diff)
        if lines:
            panels[names[q]] = lines
    return panels


def curve_panels(
    measured: Sequence[Measured],
    quantities: Sequence[str] = ("cid", "concentration", "ru"),
) -> dict[str, dict[str, tuple[Sequence[str], np.ndarray]]]:
    """Panels of the layer-wise curves of several networks."""
    names = {
        "cid": "CID (mean per pixel)",
        "concentration": "CID concentration",
        "ru": "RU (mean per pixel)",
    }
    panels: dict[str, dict] = {}
    for q in quantities:
        lines = {
            m.name: (m.layers, m.values(q)) for m in measured if m.values(q) is not None
        }
        if lines:
            panels[names[q]] = lines
    return panels
