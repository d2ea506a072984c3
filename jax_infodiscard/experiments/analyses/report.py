"""The report of an analysis comparing networks: the setting paragraph, the
regime diagnostics table, and :func:`finish` (figures, ``results`` and
notes)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jax_infodiscard.experiments.analyses import AnalysisOptions, Verdict
from jax_infodiscard.experiments.analyses.comparisons import fmt
from jax_infodiscard.experiments.analyses.figures import (
    curve_panels,
    difference_panels,
    plot_curves,
)
from jax_infodiscard.experiments.analyses.measuring import Measured, mean_sem
from jax_infodiscard.experiments.analyses.networks import Timer, cid_config
from jax_infodiscard.experiments.rundir import RunFolder

__all__ = [
    "diagnostics_table",
    "finish",
    "setting_text",
    "solver_record",
]


def diagnostics_table(
    measured: Sequence[Measured], labels: Sequence[str] | None = None
) -> str:
    """Markdown table: per network and layer, CID, concentration, RU, regime.

    ``linearity`` is the true budget of the closed-form sigma over ``beta``
    (1: the layer is linear over the noise); ``entropy gain`` is the
    solution's mean CID minus the closed form's (nats): large values mean
    the linear picture is far off and results may contradict the paper's,
    which came from a gradient-based solver. ``labels`` name the rows'
    networks (default: their names, e.g. with the seed added); the first row
    of a network gives its test accuracy (``info["test_accuracy"]``) where
    known; RU reads "not solved" where the layer's decoder does not recover
    the image (its verdict is not ``"recovers"``).
    """
    labels = [m.name for m in measured] if labels is None else list(labels)
    lines = [
        "| network | test accuracy | layer | CID (nats) | concentration | RU (nats) "
        "| linearity | entropy gain | converged |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, m in zip(labels, measured, strict=True):
        not_solved = set(m.info.get("ru_not_solved", ()))
        accuracy = m.info.get("test_accuracy")
        for i, layer in enumerate(m.layers):
            known = i == 0 and accuracy is not None and np.isfinite(accuracy)
            cells = [label, f"{accuracy:.1%}" if known else "", layer]
            for q in ("cid", "concentration", "ru"):
                v = m.values(q)
                if q == "ru" and layer in not_solved:
                    cells.append("not solved (decoder does not recover the image)")
                elif v is None or not np.isfinite(v[i]).any():
                    cells.append("")
                else:
                    cells.append(fmt(*mean_sem(v[i])))
            cells.append(f"{float(np.mean(m.cid.linearity[i])):.2f}")
            cells.append(f"{float(np.mean(m.cid.entropy_gain[i])):+.3f}")
            cells.append(f"{float(np.mean(m.cid.converged[i])):.0%}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def solver_record(options: AnalysisOptions) -> dict[str, Any]:
    """Every field of the CID solver configuration that ran (JSON-able), for
    ``results.json`` under ``"solver"``: the solver's defaults change between
    versions, so a result names the configuration that produced it.

    >>> from jax_infodiscard.experiments.analyses import AnalysisOptions
    >>> r = solver_record(AnalysisOptions())
    >>> r["method"], r["beta"] == AnalysisOptions().cid.beta
    ('optimize', True)
    """
    return dataclasses.asdict(cid_config(options))


def setting_text(
    options: AnalysisOptions, *, images: int, seeds: Sequence[int], extra: str = ""
) -> str:
    """One paragraph on the setting: scale, data, images, seeds, solver."""
    cfg = cid_config(options)
    return (
        f"Scale `{options.scale}`, data set `{options.dataset}` at "
        f"{options.image_size} px; {images} test images analysed; training "
        f"seeds {list(seeds)}. Solver: method `{cfg.method}`, beta = {cfg.beta:g}, "
        f"steps = {cfg.steps}, probes = {cfg.probes}, layer strategy "
        f"`{cfg.layer_strategy}` (every field: `solver` in results.json). "
        f"{extra}".strip()
    )


def finish(
    folder: RunFolder,
    options: AnalysisOptions,
    groups: Mapping[str, Sequence[Measured]],
    reference: str,
    verdicts: Sequence[Verdict | None],
    numbers: Mapping[str, Any],
    *,
    design: Any,
    timer: Timer,
    title: str,
    images: int,
    seeds: Sequence[int],
    extra: str = "",
    results: Mapping[str, Any] | None = None,
) -> Any:
    """Figures, ``results`` and notes of an analysis comparing networks.

    Draws ``curves.png`` (layer-wise CID, concentration, RU of every network
    of the first seed) and ``differences.png`` (per-image differences from
    ``reference``), and returns the :class:`AnalysisResult`.
    """
    from jax_infodiscard.experiments.analyses import AnalysisResult

    first = [ms[0] for ms in groups.values()]
    plot_curves(folder, "curves.png", curve_panels(first), title=title)
    diff = difference_panels(
        groups[reference][0], [m for m in first if m.name != reference]
    )
    plot_curves(
        folder,
        "differences.png",
        diff,
        title=f"Differences from {reference} (paired over images; seed {seeds[0]})",
        zero_line=list(diff),
    )
    measured = [m for ms in groups.values() for m in ms]
    labels = [
        m.name if len(seeds) == 1 else f"{m.name} (seed {s})"
        for ms in groups.values()
        for s, m in zip(seeds, ms, strict=True)
    ]
    out = {
        "design": dataclasses.asdict(design)
        if dataclasses.is_dataclass(design)
        else design,
        "reference": reference,
        "networks": {
            label: m.summary() for label, m in zip(labels, measured, strict=True)
        },
        "comparisons": dict(numbers),
        **dict(results or {}),
        "solver": solver_record(options),
        "seconds": {**timer.seconds, "total_s": timer.total()},
    }
    notes = "\n\n".join(
        [
            setting_text(options, images=images, seeds=seeds, extra=extra),
            "![curves](curves.png)\n\n![differences](differences.png)",
            "Regime diagnostics per network and layer:\n\n"
            + diagnostics_table(measured, labels),
        ]
    )
    return AnalysisResult(
        results=out,
        verdicts=tuple(v for v in verdicts if v is not None),
        notes=notes,
    )
