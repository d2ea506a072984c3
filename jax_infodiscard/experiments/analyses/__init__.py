"""The paper's analyses as jobs: ``jax-infodiscard analyze NAME --out DIR``.

Each analysis is an :class:`Analysis` in the registry :data:`ANALYSES`
(its name is a choice of the ``analyze`` command). Its ``run`` function gets
a :class:`~jax_infodiscard.experiments.rundir.RunFolder` to write figures
into and an :class:`AnalysisOptions`, and returns an
:class:`AnalysisResult`: a JSON-able ``results`` dict and the
:class:`Verdict` of each paper claim it tests. :func:`run_analysis` does the
rest for every analysis alike: it opens the run folder (manifest, refusal
of a previous run unless ``overwrite``), writes ``results.json`` and
``report.md`` (a verdict table: claim, paper figure, our numbers, outcome,
rule) and marks the run complete.

Sizes: ``scale="full"`` (the default command: three training seeds of
every compared network; estimated costs in
docs/results/seeds_cost_estimate.md), ``"fast"`` (``--fast``, one seed) and
``"toy"`` (tests). Verdicts over seeds follow the two-level rule of
:mod:`~jax_infodiscard.experiments.analyses.verdicts`: one seed never
decides, and the report gives what the first seed alone said beside the
replicated verdict. Each analysis module holds its design per scale (a frozen
``Sizes`` dataclass in ``SIZES``); ``AnalysisOptions(design=...)`` changes
fields of it (see :func:`apply_design`).

To add an analysis, write ``run(folder, options) -> AnalysisResult`` in a
module of this package and call :func:`register` at its end; then import
the module below.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from jax_infodiscard.config import CIDConfig
from jax_infodiscard.data import DATASET_NAMES
from jax_infodiscard.experiments.rundir import RunFolder
from jax_infodiscard.validation import check_int

__all__ = [
    "ANALYSES",
    "OUTCOMES",
    "Analysis",
    "AnalysisOptions",
    "AnalysisResult",
    "Verdict",
    "apply_design",
    "paired_outcome",
    "register",
    "run_analysis",
    "verdict_table",
]

Scale = Literal["toy", "fast", "full"]
SCALES: tuple[str, ...] = ("toy", "fast", "full")
OUTCOMES: tuple[str, ...] = ("held", "did not hold", "inconclusive")


@dataclasses.dataclass(frozen=True)
class AnalysisOptions:
    """Settings shared by every analysis (the ``analyze`` flags).

    Attributes:
      scale: ``"full"``, ``"fast"`` (``--fast``) or ``"toy"`` (tests).
      dataset: data set name (``--dataset``).
      image_size: image side in pixels.
      seed: seed of training and of the solver keys.
      cid: CID configuration (``--beta``, ``--method``).
      cache_dir: model cache (``None``: the shared default).
      progress: progress bars.
      status: a line per finished phase (training, CID, decoders, RU) with
        its time; the command line turns it on.
      design: changes to the analysis' design at ``scale``, as
        ``{field: value}`` over the fields of its ``Sizes`` (``SIZES[scale]``
        in the analysis' module), e.g. ``{"depths": (8,)}`` for ``depth``.
        No command-line flag; for notebooks and experiments that need a
        smaller or another design. Stored as sorted ``(field, value)`` pairs
        (lists become tuples); the names and kinds of value are checked
        against the analysis by :func:`run_analysis`, and the design used is
        written to ``results.json`` and the manifest.
    """

    scale: Scale = "full"
    dataset: str = "synthetic"
    image_size: int = 32
    seed: int = 0
    cid: CIDConfig = dataclasses.field(default_factory=CIDConfig)
    cache_dir: str | os.PathLike | None = None
    progress: bool = True
    status: bool = False
    design: Mapping[str, Any] | tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {self.scale!r}")
        if self.dataset not in DATASET_NAMES:
            raise ValueError(
                f"unknown data set {self.dataset!r}; choose one of "
                f"{list(DATASET_NAMES)}"
            )
        check_int("image_size", self.image_size, 1)
        check_int("seed", self.seed, 0)
        object.__setattr__(self, "design", _design_pairs(self.design))

    def manifest_config(self) -> dict[str, Any]:
        """The settings that shape results (for the run manifest)."""
        cfg = dataclasses.asdict(self)
        cfg.pop("progress")
        cfg.pop("status")
        cfg.pop("cache_dir")
        return cfg


def _as_tuples(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_as_tuples(v) for v in value)
    return value


def _design_pairs(design: Any) -> tuple[tuple[str, Any], ...]:
    """``design`` as sorted ``(field, value)`` pairs (lists as tuples)."""
    if isinstance(design, Mapping):
        items = list(design.items())
    elif isinstance(design, list | tuple) and all(
        isinstance(p, list | tuple) and len(p) == 2 for p in design
    ):
        items = [tuple(p) for p in design]
    else:
        raise TypeError(
            "design must be a mapping {field: value} or (field, value) pairs, "
            f"got {type(design).__name__}"
        )
    names = [k for k, _ in items]
    if not all(isinstance(k, str) for k in names):
        raise TypeError(f"design field names must be strings, got {names!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"design names a field twice: {names!r}")
    return tuple(sorted((k, _as_tuples(v)) for k, v in items))


def _positive_ints(v: Any) -> bool:
    return bool(v) and all(isinstance(d, int) and d >= 1 for d in v)


# Ranges of the design fields that several analyses share (by name); a field
# not named here is checked for its kind only, and its meaning where used.
_FIELD_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{
        name: (lambda v: v >= 1, "an integer >= 1")
        for name in (
            "width",
            "num_train",
            "epochs",
            "num_images",
            "filters",
            "kernel",
            "pgd_steps",
            "top_k",
        )
    },
    "ru_train": (lambda v: v >= 0, "an integer >= 0 (0: no RU)"),
    "finetune_epochs": (lambda v: v >= 0, "an integer >= 0"),
    "seeds": (
        lambda v: (
            len(v) >= 1
            and all(isinstance(s, int) and s >= 0 for s in v)
            and len(set(v)) == len(v)
        ),
        "distinct integers >= 0 (offsets of options.seed), at least one",
    ),
    "depths": (_positive_ints, "positive integers, at least one"),
    "sparsities": (
        lambda v: bool(v) and all(0 < p < 1 for p in v),
        "fractions strictly between 0 and 1, at least one",
    ),
    "epsilon": (lambda v: v > 0, "a number > 0"),
    "pgd_step_size": (lambda v: v > 0, "a number > 0"),
    "temperature": (lambda v: v > 0, "a number > 0"),
    "weight": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "accuracy_tolerance": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
}


def _same_kind(value: Any, like: Any) -> bool:
    if isinstance(like, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(like, bool)
    if isinstance(like, int):
        return isinstance(value, int)
    if isinstance(like, float):
        return isinstance(value, int | float) and math.isfinite(value)
    if isinstance(like, str | tuple):
        return isinstance(value, type(like))
    return True


def apply_design(sizes: Mapping[str, Any], options: AnalysisOptions) -> Any:
    """An analysis' design at ``options.scale`` with ``options.design`` applied.

    Args:
      sizes: the analysis' designs per scale (its module's ``SIZES``: a
        frozen dataclass per scale).
      options: the options; ``options.design`` names fields to change.

    Returns:
      ``sizes[options.scale]``, with the changed fields replaced.

    Raises:
      ValueError: a field the design does not have, or a value of another
        kind than the scale's (a tuple for a tuple, an integer for an
        integer, a finite number for a float, a string for a string, a
        bool for a bool), or out of its range (a width below 1, a sparsity
        outside (0, 1), repeated seeds). What names mean (a model, a layer)
        is checked where they are used.

    >>> from jax_infodiscard.experiments.analyses import depth
    >>> options = AnalysisOptions(scale="toy", design={"depths": [8]})
    >>> apply_design(depth.SIZES, options).depths
    (8,)
    """
    base = sizes[options.scale]
    if not options.design:
        return base
    fields = {f.name for f in dataclasses.fields(base)}
    unknown = [k for k, _ in options.design if k not in fields]
    if unknown:
        raise ValueError(
            f"design has no field(s) {unknown}; its fields are {sorted(fields)}"
        )
    for k, v in options.design:
        if not _same_kind(v, getattr(base, k)):
            raise ValueError(
                f"design field {k!r} takes a value like {getattr(base, k)!r}, got {v!r}"
            )
        rule = _FIELD_RULES.get(k)
        if rule is not None and not rule[0](v):
            raise ValueError(f"design field {k!r} must be {rule[1]}, got {v!r}")
    return dataclasses.replace(base, **dict(options.design))


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Whether one claim of the paper held in our measurement.

    Attributes:
      claim: the claim, in one sentence.
      figure: where the paper makes it (``"Fig. 3b"``).
      measured: our numbers, as text (with their spread).
      outcome: one of :data:`OUTCOMES`.
      rule: the decision rule used.
      alone: what the first training seed alone said (the per-image rule of
        one seed: :func:`paired_outcome`), one of :data:`OUTCOMES`; ``""``
        where the verdict is not over seeds.
      first_seed: that seed (as trained), or None.
    """

    claim: str
    figure: str
    measured: str
    outcome: str
    rule: str
    alone: str = ""
    first_seed: int | None = None

    def __post_init__(self):
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {self.outcome!r}")
        if self.alone and self.alone not in OUTCOMES:
            raise ValueError(f"alone must be one of {OUTCOMES}, got {self.alone!r}")


@dataclasses.dataclass(frozen=True)
class AnalysisResult:
    """What an analysis returns.

    Attributes:
      results: JSON-able numbers (written as ``results.json``).
      verdicts: one :class:`Verdict` per claim tested.
      notes: extra Markdown for ``report.md`` (setting, caveats).
    """

    results: dict[str, Any]
    verdicts: tuple[Verdict, ...] = ()
    notes: str = ""


@dataclasses.dataclass(frozen=True)
class Analysis:
    """A registered analysis.

    Attributes:
      name: the ``analyze`` choice.
      summary: one line for ``--help``.
      paper: the paper's figures/tables it reproduces.
      run: ``run(folder, options) -> AnalysisResult``; writes its figures
        with ``folder.write_figure``.
      datasets: data sets it supports.
      sizes: its design per scale (``SIZES``), which ``options.design`` may
        change; ``None``: no design to change.
    """

    name: str
    summary: str
    paper: str
    run: Callable[[RunFolder, AnalysisOptions], AnalysisResult]
    datasets: tuple[str, ...] = DATASET_NAMES
    sizes: Mapping[str, Any] | None = None


ANALYSES: dict[str, Analysis] = {}
"""Registered analyses by name (the ``analyze`` command's choices)."""


def register(analysis: Analysis) -> Analysis:
    """Adds ``analysis`` to :data:`ANALYSES` (names must be unique)."""
    if analysis.name in ANALYSES:
        raise ValueError(f"analysis {analysis.name!r} is already registered")
    ANALYSES[analysis.name] = analysis
    return analysis


def paired_outcome(
    differences: Any, *, expect: Literal["positive", "negative"], sigmas: float = 2.0
) -> tuple[str, float, float]:
    """Outcome of "the mean of paired differences has the expected sign".

    Rule: held if the mean lies beyond ``sigmas`` standard errors on the
    expected side of 0, did not hold if beyond them on the other side,
    inconclusive otherwise (also with fewer than two differences).

    Args:
      differences: per-image (or per-seed) differences ``(N,)``.
      expect: the sign the paper claims.
      sigmas: standard errors required.

    Returns:
      ``(outcome, mean, standard error)``.

    >>> paired_outcome([1.0, 1.2, 0.9, 1.1], expect="positive")[0]
    'held'
    >>> paired_outcome([1.0, -1.0], expect="positive")[0]
    'inconclusive'
    """
    d = np.asarray(differences, dtype=float).ravel()
    d = d[np.isfinite(d)]
    if d.size < 2:
        return "inconclusive", float(d.mean()) if d.size else math.nan, math.nan
    mean = float(d.mean())
    sem = float(d.std(ddof=1) / math.sqrt(d.size))
    sign = 1.0 if expect == "positive" else -1.0
    if sign * mean > sigmas * sem:
        return "held", mean, sem
    if -sign * mean > sigmas * sem:
        return "did not hold", mean, sem
    return "inconclusive", mean, sem


def verdict_table(verdicts: Sequence[Verdict]) -> str:
    """Markdown table: claim, paper figure, our numbers, outcome, rule.

    Where verdicts are over training seeds (``alone`` set), a column beside
    the replicated verdict gives what the first seed alone said, headed with
    that seed (``seed 0 alone said``) when every verdict shares it.

    >>> v = Verdict("c", "Fig. 1", "m", "inconclusive", "r", "held", 0)
    >>> print(verdict_table([v]).splitlines()[0])
    | claim | paper | measured | verdict | seed 0 alone said | rule |
    """
    alone = any(v.alone for v in verdicts)
    first = None
    header = ["claim", "paper", "measured", "verdict", "rule"]
    if alone:
        firsts = {v.first_seed for v in verdicts if v.alone}
        first = next(iter(firsts)) if len(firsts) == 1 else None
        header.insert(
            4, "first seed alone said" if first is None else f"seed {first} alone said"
        )
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for v in verdicts:
        cells = [v.claim, v.figure, v.measured, f"**{v.outcome}**", v.rule]
        if alone:
            said = v.alone
            if said and first is None and v.first_seed is not None:
                said += f" (seed {v.first_seed})"
            cells.insert(4, said)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def run_analysis(
    name: str,
    out_dir: str | os.PathLike,
    options: AnalysisOptions = AnalysisOptions(),
    *,
    overwrite: bool = False,
    argv: Sequence[str] | None = None,
) -> AnalysisResult:
    """Runs analysis ``name`` into the run folder ``out_dir``.

    Writes the analysis' figures, ``results.json``, ``report.md`` and the
    manifest.

    Raises:
      ValueError: unknown analysis, a data set it does not support, or an
        ``options.design`` it cannot take (checked before ``out_dir`` is
        touched).
      RunFolderError: ``out_dir`` holds a previous run (and not
        ``overwrite``).
    """
    if name not in ANALYSES:
        raise ValueError(f"unknown analysis {name!r}; choose one of {sorted(ANALYSES)}")
    analysis = ANALYSES[name]
    if options.dataset not in analysis.datasets:
        raise ValueError(
            f"analysis {name!r} supports the data sets {list(analysis.datasets)}, "
            f"not {options.dataset!r}"
        )
    if analysis.sizes is not None:
        apply_design(analysis.sizes, options)
    elif options.design:
        raise ValueError(f"analysis {name!r} has no design to change")
    folder = RunFolder.open(
        out_dir,
        command=f"analyze {name}",
        config=options.manifest_config(),
        overwrite=overwrite,
        argv=argv,
        keep=[options.cache_dir] if options.cache_dir else (),
    )
    with folder.running():
        result = analysis.run(folder, options)
        verdicts = [dataclasses.asdict(v) for v in result.verdicts]
        folder.write_json(
            "results.json",
            {"analysis": name, "paper": analysis.paper, "verdicts": verdicts}
            | result.results,
        )
        report = [f"# {name}: {analysis.summary}", "", f"Paper: {analysis.paper}."]
        if result.notes:
            report += ["", result.notes]
        if result.verdicts:
            report += ["", verdict_table(result.verdicts)]
        folder.write_text("report.md", "\n".join(report) + "\n")
        folder.complete(verdicts={v.claim: v.outcome for v in result.verdicts})
    return result


# Registered analyses (each module calls ``register`` on import).
from jax_infodiscard.experiments.analyses import (  # noqa: E402, F401
    adversarial,
    compression,
    concentration,
    damage,
    depth,
    distillation,
    epochs,
    layerwise,
)
