"""Comparing networks image by image: paired differences per training seed,
their two-level verdict (the rule lives in
:mod:`~jax_infodiscard.experiments.analyses.verdicts`), and rank correlation."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jax_infodiscard.experiments.analyses import Verdict, verdicts
from jax_infodiscard.experiments.analyses.measuring import Measured

__all__ = [
    "SEED_RULE",
    "all_of",
    "combine_seeds",
    "delta_verdict",
    "fmt",
    "linearity_text",
    "mc_errors",
    "measured_layers",
    "no_change_verdict",
    "paired_over_seeds",
    "pooled",
    "seeds_of",
    "spearman",
    "verdict",
]


def fmt(mean: float, sem: float, digits: int = 3) -> str:
    """``+0.012 ± 0.004`` (mean ± one standard error)."""
    if not np.isfinite(sem):
        return f"{mean:+.{digits}f}"
    return f"{mean:+.{digits}f} ± {sem:.{digits}f}"


def mc_errors(m: Measured, quantity: str) -> np.ndarray | None:
    """Monte-Carlo standard errors ``(L, B)`` of ``m.values(quantity)``.

    Read from the result's ``mean_se`` where it carries one (CID and RU;
    NaN rows where RU was not solved), else None: not known (older
    results, concentration).
    """
    if quantity == "cid":
        se = getattr(m.cid, "mean_se", None)
        return None if se is None else np.asarray(se, float)
    if quantity != "ru" or m.ru is None:
        return None
    se = getattr(m.ru, "mean_se", None)
    if se is None:
        return None
    out = np.full((len(m.layers), np.shape(se)[1]), np.nan)
    for j, layer in enumerate(m.ru_layers):
        out[m.layers.index(layer)] = np.asarray(se)[j]
    return out


def seeds_of(ms: Sequence[Measured]) -> list[int]:
    """The training seeds of a network's measurements (``info["seed"]``;
    their positions where not recorded)."""
    return [int(m.info.get("seed", i)) for i, m in enumerate(ms)]


def combine_seeds(
    per_seed: Sequence[np.ndarray],
    *,
    expect: str,
    seeds: Sequence[int] | None = None,
    mc: Sequence[np.ndarray | None] | None = None,
) -> verdicts.Replicated:
    """Two-level verdict over training seeds of per-image paired differences.

    Rule: :func:`~jax_infodiscard.experiments.analyses.verdicts.replicated`
    (the seeds' mean beyond 2 standard errors over seeds, with the
    per-image errors and the MC error of the solve folded in, and every
    seed on the expected side).

    Args:
      per_seed: per seed, the per-image differences ``(B,)``.
      expect: ``"positive"`` or ``"negative"``.
      seeds: the training seeds (default ``0, 1, ...``).
      mc: per seed, the per-image MC standard errors ``(B,)`` or None.
    """
    seeds = list(range(len(per_seed))) if seeds is None else list(seeds)
    mc = [None] * len(per_seed) if mc is None else list(mc)
    return verdicts.replicated(
        [
            verdicts.seed_figure(s, d, expect=expect, mc_errors=e)
            for s, d, e in zip(seeds, per_seed, mc, strict=True)
        ],
        expect=expect,
    )


all_of = verdicts.all_of


def pooled(m: Measured, quantity: str, layers: Sequence[str] | None = None):
    """Per-image mean of ``quantity`` over ``layers`` (default all): ``(B,)``."""
    v = m.values(quantity)
    idx = [m.layers.index(x) for x in (layers or m.layers)]
    return np.nanmean(v[idx], axis=0)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (ties: average ranks); NaN if undefined."""

    def ranks(v):
        v = np.asarray(v, float)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for val in np.unique(v):  # average ties
            r[v == val] = r[v == val].mean()
        return r

    if len(x) < 2:
        return math.nan
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def verdict(
    claim: str,
    figure: str,
    measured: str,
    outcome: str,
    rule: str,
    alone: str = "",
    first_seed: int | None = None,
):
    """A :class:`Verdict` (shorthand)."""
    return Verdict(claim, figure, measured, outcome, rule, alone, first_seed)


def correlation_verdict(
    x: Sequence[Sequence[float]],
    y: Sequence[Sequence[float]],
    seeds: Sequence[int],
    *,
    claim: str,
    figure: str,
    between: str,
    items: str,
    detail: str,
) -> tuple[Verdict, dict]:
    """Verdict on a claimed positive rank correlation over networks, per seed.

    ``x[i]`` and ``y[i]`` hold the two quantities of every network for the
    seed ``seeds[i]``; Spearman's rho is taken per seed and judged by
    :func:`verdicts.correlation_outcome` (inconclusive with fewer than 3
    networks), the first seed alone too. ``between`` names the two
    quantities for the rule, ``items`` the networks (plural noun), and
    ``detail`` follows the coefficients in the measured text.

    Returns ``(verdict, numbers)``, numbers being ``{"spearman_per_seed",
    "seeds", "outcome", "alone"}``.

    >>> v, n = correlation_verdict([[1, 2, 3]] * 2, [[1, 2, 4], [0, 3, 5]], [0, 1],
    ...     claim="c", figure="f", between="a and b", items="nets", detail="d")
    >>> v.outcome, v.alone, n["spearman_per_seed"]
    ('held', 'held', [1.0, 1.0])
    >>> v.measured
    'Spearman ρ seed 0: +1.00, seed 1: +1.00 over 3 nets; d'
    """
    rhos = [spearman(a, b) for a, b in zip(x, y, strict=True)]
    count = len(x[0]) if len(x) else 0
    enough = count >= 3
    outcome = verdicts.correlation_outcome(rhos, min_items=enough)
    alone = verdicts.correlation_outcome(rhos[:1], min_items=enough, min_seeds=1)
    numbers = {
        "spearman_per_seed": rhos,
        "seeds": list(seeds),
        "outcome": outcome,
        "alone": alone,
    }
    coefficients = ", ".join(
        f"seed {s}: {r:+.2f}" for s, r in zip(seeds, rhos, strict=True)
    )
    return verdict(
        claim,
        figure,
        f"Spearman ρ {coefficients} over {count} {items}; {detail}",
        outcome,
        f"Spearman ρ over the {items} between {between}, per seed: held if "
        "every seed's ρ > 0 and their mean ≥ 0.8, did not hold if every seed's "
        f"ρ ≤ 0, else inconclusive (also with one seed or fewer than 3 {items})",
        alone,
        seeds[0],
    ), numbers


SEED_RULE = (
    "over seeds: the mean of the seed means beyond 2 SE over seeds (the "
    "spread of the seed means, at least the per-image SE, MC error of the "
    "solve folded in) and every seed on that side; held if for every compared "
    "network; one seed: inconclusive"
)


def _layer_mean(values: list[np.ndarray]) -> np.ndarray:
    with warnings.catch_warnings():  # all-NaN layers (RU not solved)
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=0)


def measured_layers(
    measured: Sequence[Measured], quantity: str, layers: Sequence[str]
) -> list[str]:
    """The names of ``layers`` at which every one of ``measured`` has a
    finite value of ``quantity`` for some image: all of them for CID and
    concentration; for RU, the layers whose decoders recover the image in
    every network (elsewhere RU is not solved and its values are NaN)."""
    out = []
    for x in layers:
        values = [
            None
            if m.values(quantity) is None or x not in m.layers
            else m.at(quantity, x)
            for m in measured
        ]
        if all(v is not None and np.isfinite(v).any() for v in values):
            out.append(x)
    return out


def paired_over_seeds(
    base: Sequence[Measured],
    other: Sequence[Measured],
    quantity: str,
    layers: Sequence[str],
) -> tuple[list[np.ndarray], list[np.ndarray | None]] | None:
    """Per seed, the per-image ``other - base`` averaged over ``layers``
    ``(B,)``, and its MC standard error ``(B,)`` (None where not known).

    Only the layers where both networks have the quantity count (RU is not
    solved at every layer; see :func:`measured_layers`). The MC errors of
    the two networks are added in quadrature per layer and layer
    (conservative: the same noise key makes them correlate), and the layer
    mean's error is ``sqrt(sum se^2) / L`` over those ``L`` layers. None
    when ``quantity`` was not measured.
    """
    diffs, errors = [], []
    for b, o in zip(base, other, strict=True):
        if b.values(quantity) is None or o.values(quantity) is None:
            return None
        shared = measured_layers([b, o], quantity, layers)
        diffs.append(
            _layer_mean([o.at(quantity, x) - b.at(quantity, x) for x in shared])
            if shared
            else np.full(np.shape(b.values(quantity))[1], np.nan)
        )
        eb, eo = mc_errors(b, quantity), mc_errors(o, quantity)
        if eb is None or eo is None or not shared:
            errors.append(None)
            continue
        var = [eb[b.layers.index(x)] ** 2 + eo[o.layers.index(x)] ** 2 for x in shared]
        errors.append(np.sqrt(np.nansum(var, axis=0)) / len(shared))
    return diffs, errors


def delta_verdict(
    groups: Mapping[str, Sequence[Measured]],
    reference: str,
    quantity: str,
    layers: Sequence[str],
    *,
    expect: str,
    claim: str,
    figure: str,
    others: Sequence[str] | None = None,
) -> tuple[Verdict | None, dict[str, Any]]:
    """Verdict on "``others`` minus ``reference`` has the sign ``expect``".

    ``groups`` maps a network's name to its :class:`Measured` per training
    seed (the same seeds in every group, recorded in ``info["seed"]``). Per
    other network and seed, the per-image difference is averaged over
    ``layers``; the outcome of each other network is :func:`combine_seeds`'s
    two-level rule over seeds, and the claim's is :func:`all_of` them. The
    verdict also records what the first seed alone said (per-image rule).
    ``None`` when ``quantity`` was not measured.
    """
    results: dict[str, verdicts.Replicated] = {}
    seeds = seeds_of(groups[reference])
    names = list(others or [n for n in groups if n != reference])
    for name in names:
        paired = paired_over_seeds(groups[reference], groups[name], quantity, layers)
        if paired is None:
            continue
        results[name] = combine_seeds(
            paired[0], expect=expect, seeds=seeds, mc=paired[1]
        )
    # Each seed averages the layers where both of its networks have the
    # quantity (RU: where their decoders recover the image); say which.
    common = measured_layers(
        [m for n in (reference, *names) for m in groups[n]], quantity, layers
    )
    same = all(
        measured_layers([b, o], quantity, layers) == common
        for n in names
        for b, o in zip(groups[reference], groups[n], strict=True)
    )
    used_layers = list(common) if same else list(layers)
    numbers = {name: {"layers": used_layers, **r.row()} for name, r in results.items()}
    unmeasured = not results or all(f.n == 0 for r in results.values() for f in r.seeds)
    unlearned = sorted(
        {
            x
            for ms in groups.values()
            for m in ms
            for x in m.info.get("ru_not_solved", ())
            if x in layers
        }
    )
    if quantity.startswith("ru") and unlearned and unmeasured:
        return verdict(
            claim,
            figure,
            "RU not measured: the RU decoders do not recover the image (their "
            "verdict is 'undertrained' or 'no recoverable information') at "
            f"{', '.join(unlearned)}",
            "inconclusive",
            "RU is solved only where the decoder learned something",
        ), numbers
    if not results:
        return None, numbers
    if same:
        where = ", ".join(common) if len(common) <= 3 else f"{len(common)} layers"
    else:
        named = ", ".join(layers) if len(layers) <= 3 else f"{len(layers)} layers"
        where = f"those of {named} with {quantity} in both networks of each seed"
    rule = (
        f"per-image difference of {quantity} (mean over {where}), "
        f"{'>' if expect == 'positive' else '<'} 0; {SEED_RULE}"
    )
    used = [groups[reference], *(groups[n] for n in results)]
    texts = [f"{name} − {reference}: {r.text()}" for name, r in results.items()]
    measured = "; ".join(texts) + f"; {linearity_text(used, common or layers)}"
    return verdict(
        claim,
        figure,
        measured,
        all_of([r.outcome for r in results.values()]),
        rule,
        all_of([r.alone for r in results.values()]),
        seeds[0],
    ), numbers


def linearity_text(
    measured: Sequence[Sequence[Measured]], layers: Sequence[str]
) -> str:
    """``"solver linearity 0.82–1.07"``: the range of the per-layer mean
    ``linearity`` over the networks and ``layers`` (1: the layer is linear
    over the noise; far from 1, the closed form is off)."""
    values = [
        float(np.mean(m.cid.linearity[m.layers.index(x)]))
        for ms in measured
        for m in ms
        for x in layers
        if x in m.layers
    ]
    if not values:
        return "solver linearity n/a"
    return f"solver linearity {min(values):.2f}–{max(values):.2f}"


def no_change_verdict(
    groups: Mapping[str, Sequence[Measured]],
    reference: str,
    quantity: str,
    layers: Sequence[str],
    *,
    claim: str,
    figure: str,
) -> tuple[Verdict | None, dict[str, Any]]:
    """Verdict on "the others do not differ significantly from ``reference``".

    Rule: :func:`~jax_infodiscard.experiments.analyses.verdicts.no_change`
    over the two-level results of every network (mean over ``layers`` of
    the per-image difference): held if every mean over seeds lies within 2
    two-level standard errors of 0, did not hold if a change replicates
    (beyond 2 SE, every seed on one side), else inconclusive (also with one
    seed). An absence holds more easily with few images and seeds: read it
    with the spread. The first seed alone: held if no network's mean is
    beyond 2 SE over its images, else did not hold.
    """
    v, numbers = delta_verdict(
        groups,
        reference,
        quantity,
        layers,
        expect="positive",
        claim=claim,
        figure=figure,
    )
    if v is None or not numbers or "RU not measured" in v.measured:
        return v, numbers
    results = [
        verdicts.replicated(
            [verdicts.SeedFigure(**f) for f in n["seeds"]], expect="positive"
        )
        for n in numbers.values()
    ]
    outcome = verdicts.no_change(results)
    firsts = [r.seeds[0] for r in results]
    if any(f.n < 2 for f in firsts):
        alone = "inconclusive"
    elif all(f.outcome == "inconclusive" for f in firsts):
        alone = "held"
    else:
        alone = "did not hold"
    for n in numbers.values():
        n["outcome"] = outcome
    rule = (
        f"per-image difference of {quantity} (mean over the layers); over "
        "seeds: the mean of the seed means within 2 SE over seeds of 0 for every "
        "compared network: held; a change beyond 2 SE with every seed on one "
        "side: did not hold; else (or one seed) inconclusive"
    )
    return dataclasses.replace(v, outcome=outcome, rule=rule, alone=alone), numbers
