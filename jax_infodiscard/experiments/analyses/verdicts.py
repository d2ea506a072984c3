"""Verdicts that count training seeds: a two-level (seeds, images) rule.

An analysis compares networks trained with the same recipe under several
training seeds, on the same test images. Its data for one claim are, per
seed ``s``, the per-image paired differences ``d[s, i]`` (for example
CID of the changed network minus CID of the original, in nats), and
optionally the Monte-Carlo standard error ``e[s, i]`` of each difference
(the solver's error of the estimate, where the result carries one).

The two levels:

* within a seed, the seed mean ``m_s = mean_i d[s, i]`` has the standard
  error ``w_s = sd_i(d[s, i]) / sqrt(n_s)`` over images, with the
  Monte-Carlo error ``sqrt(sum_i e[s, i]^2) / n_s`` added in quadrature
  (conservative: the spread over images already holds part of it);
* over seeds, the replicated effect is ``M = mean_s m_s``; its standard
  error is ``sqrt(max(var_s(m_s), mean_s(w_s^2)) / S)``. The spread of the
  seed means already contains the within-seed errors; the floor keeps
  three seeds that agree by chance from claiming more precision than their
  images allow (a random-effects estimate whose between-seed variance is
  ``max(0, var_s(m_s) - mean_s(w_s^2))``).

Rule (:func:`replicated`): **held** if ``M`` lies beyond ``sigmas``
(default 2) such standard errors on the expected side of 0 *and* every
seed's mean has the expected sign; **did not hold** if the same is true on
the other side; otherwise **inconclusive**, and always with fewer than two
seeds (one seed says nothing about a freshly trained network; what it says
alone is kept as :attr:`Replicated.alone`).

Pure NumPy; no JAX, no I/O.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

__all__ = [
    "OUTCOMES",
    "Replicated",
    "SeedFigure",
    "all_of",
    "correlation_outcome",
    "no_change",
    "replicated",
    "seed_figure",
    "signed_outcome",
]

OUTCOMES: tuple[str, ...] = ("held", "did not hold", "inconclusive")
Expect = Literal["positive", "negative"]


def _sign(expect: str) -> float:
    if expect not in ("positive", "negative"):
        raise ValueError(f"expect must be 'positive' or 'negative', got {expect!r}")
    return 1.0 if expect == "positive" else -1.0


def signed_outcome(mean: float, se: float, expect: str, sigmas: float = 2.0) -> str:
    """``held``/``did not hold``/``inconclusive`` of one mean and its error.

    >>> signed_outcome(0.3, 0.1, "positive"), signed_outcome(0.3, 0.1, "negative")
    ('held', 'did not hold')
    >>> signed_outcome(0.1, 0.1, "positive"), signed_outcome(0.3, math.nan, "positive")
    ('inconclusive', 'inconclusive')
    """
    sign = _sign(expect)
    if not (math.isfinite(mean) and math.isfinite(se)):
        return "inconclusive"
    if sign * mean > sigmas * se:
        return "held"
    if -sign * mean > sigmas * se:
        return "did not hold"
    return "inconclusive"


@dataclasses.dataclass(frozen=True)
class SeedFigure:
    """One training seed's paired differences, summarised.

    Attributes:
      seed: the training seed (as trained, not an offset).
      n: finite per-image differences.
      mean: their mean (nats, or the quantity's unit).
      sem: standard error over images (NaN with fewer than 2 images).
      sd: standard deviation over images (ddof 1; NaN below 2 images).
      mc: Monte-Carlo standard error of ``mean`` (0 when not known).
      outcome: what this seed alone says (beyond ``sigmas`` SE over images,
        the MC error folded in).
    """

    seed: int
    n: int
    mean: float
    sem: float
    sd: float
    mc: float
    outcome: str

    @property
    def error(self) -> float:
        """Within-seed standard error of ``mean``: ``sqrt(sem^2 + mc^2)``."""
        return math.hypot(self.sem, self.mc)


def seed_figure(
    seed: int,
    differences: Any,
    *,
    expect: Expect,
    mc_errors: Any = None,
    sigmas: float = 2.0,
) -> SeedFigure:
    """Summary of one seed's per-image differences ``(N,)``.

    Args:
      seed: the training seed.
      differences: per-image paired differences ``(N,)``; NaN are dropped.
      expect: the sign the claim expects.
      mc_errors: per-image Monte-Carlo standard errors ``(N,)`` of the
        differences, or None (not known: 0).
      sigmas: standard errors required for this seed's own outcome.

    >>> f = seed_figure(3, [1.0, 1.2, 0.8], expect="positive")
    >>> f.seed, f.n, round(f.mean, 3), round(f.sem, 3), f.outcome
    (3, 3, 1.0, 0.115, 'held')
    >>> seed_figure(3, [1.0, 1.2, 0.8], expect="positive", mc_errors=[3, 3, 3]).outcome
    'inconclusive'
    """
    d = np.asarray(differences, dtype=float).ravel()
    ok = np.isfinite(d)
    if mc_errors is None:
        e = np.zeros_like(d)
    else:
        e = np.broadcast_to(np.asarray(mc_errors, dtype=float).ravel(), d.shape)
        e = np.where(np.isfinite(e), e, 0.0)
    d, e = d[ok], e[ok]
    n = int(d.size)
    mean = float(d.mean()) if n else math.nan
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    sem = sd / math.sqrt(n) if n > 1 else math.nan
    mc = float(np.sqrt(np.sum(e**2)) / n) if n else 0.0
    figure = SeedFigure(int(seed), n, mean, sem, sd, mc, "inconclusive")
    return dataclasses.replace(
        figure, outcome=signed_outcome(mean, figure.error, expect, sigmas)
    )


@dataclasses.dataclass(frozen=True)
class Replicated:
    """The two-level verdict of one comparison over seeds.

    Attributes:
      outcome: one of :data:`OUTCOMES` (see the module's rule).
      mean: the mean over seeds of the seed means ``M``.
      se: its two-level standard error (NaN with fewer than two seeds).
      between_sd: standard deviation of the seed means (ddof 1; NaN below
        two seeds).
      within_sd: per-image standard deviation within a seed, pooled over
        seeds (root mean of the per-seed variances).
      agree: seeds whose mean has the expected sign.
      beyond: seeds beyond ``sigmas`` SE over images on the expected side.
      seeds: the per-seed figures, in training order.
      expect: the expected sign.
    """

    outcome: str
    mean: float
    se: float
    between_sd: float
    within_sd: float
    agree: int
    beyond: int
    seeds: tuple[SeedFigure, ...]
    expect: str

    @property
    def alone(self) -> str:
        """What the first seed alone said (the one-seed, per-image rule)."""
        return self.seeds[0].outcome if self.seeds else "inconclusive"

    def text(self, digits: int = 3) -> str:
        """Per-seed figures, the replicated mean, the SDs and the agreement.

        >>> r = replicated([seed_figure(s, [s, s + 0.2], expect="positive")
        ...                 for s in (1, 2)], expect="positive")
        >>> print(r.text(2))  # doctest: +NORMALIZE_WHITESPACE
        seed 1: +1.10 ± 0.10; seed 2: +2.10 ± 0.10; over 2 seeds +1.60 ± 0.50
        (between-seed SD 0.71, within-seed SD 0.14 over 2 images); 2 of 2
        seeds agree in sign, 2 beyond 2 SE alone
        """
        per = "; ".join(
            f"seed {f.seed}: {_pm(f.mean, f.error, digits)}" for f in self.seeds
        )
        n = sorted({f.n for f in self.seeds})
        images = f"{n[0]}" if len(n) == 1 else f"{n[0]}-{n[-1]}"
        if len(self.seeds) < 2:
            return f"{per} (n={images} images; one seed: not replicated)"
        return (
            f"{per}; over {len(self.seeds)} seeds {_pm(self.mean, self.se, digits)} "
            f"(between-seed SD {self.between_sd:.{digits}f}, within-seed SD "
            f"{self.within_sd:.{digits}f} over {images} images); {self.agree} of "
            f"{len(self.seeds)} seeds agree in sign, {self.beyond} beyond 2 SE alone"
        )

    def row(self) -> dict[str, Any]:
        """JSON-able numbers: the summary and one dict per seed."""
        return {
            "outcome": self.outcome,
            "mean": self.mean,
            "se": self.se,
            "between_sd": self.between_sd,
            "within_sd": self.within_sd,
            "agree": self.agree,
            "beyond": self.beyond,
            "alone": self.alone,
            "seeds": [dataclasses.asdict(f) for f in self.seeds],
        }


def _pm(mean: float, se: float, digits: int) -> str:
    if not math.isfinite(se):
        return f"{mean:+.{digits}f}"
    return f"{mean:+.{digits}f} ± {se:.{digits}f}"


def replicated(
    figures: Sequence[SeedFigure], *, expect: Expect, sigmas: float = 2.0
) -> Replicated:
    """The two-level verdict over seeds (the module's rule).

    Args:
      figures: one :func:`seed_figure` per training seed (a seed without
        finite differences counts as disagreeing).
      expect: the sign the claim expects.
      sigmas: standard errors required.

    >>> consistent = [seed_figure(s, [0.10, 0.12, 0.08], expect="positive")
    ...               for s in (0, 1, 2)]
    >>> replicated(consistent, expect="positive").outcome
    'held'
    >>> replicated(consistent[:1], expect="positive").outcome  # one seed
    'inconclusive'
    """
    sign = _sign(expect)
    # Each seed's own outcome, for this claim's sign and sigmas.
    figures = tuple(
        dataclasses.replace(f, outcome=signed_outcome(f.mean, f.error, expect, sigmas))
        for f in figures
    )
    means = np.array([f.mean for f in figures], dtype=float)
    errors = np.array([f.error for f in figures], dtype=float)
    sds = np.array([f.sd for f in figures], dtype=float)
    finite = np.isfinite(means)
    agree = int(np.sum(finite & (sign * np.where(finite, means, 0.0) > 0)))
    beyond = sum(f.outcome == "held" for f in figures)
    with np.errstate(invalid="ignore"):
        within_sd = (
            float(np.sqrt(np.mean(sds[np.isfinite(sds)] ** 2)))
            if np.isfinite(sds).any()
            else math.nan
        )
    s = int(finite.sum())
    mean = float(means[finite].mean()) if s else math.nan
    if s < 2 or s < len(figures):
        between_sd = float(means[finite].std(ddof=1)) if s > 1 else math.nan
        return Replicated(
            "inconclusive",
            mean,
            math.nan,
            between_sd,
            within_sd,
            agree,
            beyond,
            figures,
            expect,
        )
    between_var = float(means.var(ddof=1))
    within_var = float(np.mean(errors**2)) if np.isfinite(errors).all() else math.nan
    se = math.nan
    if math.isfinite(within_var):
        se = math.sqrt(max(between_var, within_var) / s)
    outcome = signed_outcome(mean, se, expect, sigmas)
    if outcome == "held" and agree < s:
        outcome = "inconclusive"
    if outcome == "did not hold" and sum(sign * m < 0 for m in means) < s:
        outcome = "inconclusive"
    return Replicated(
        outcome,
        mean,
        se,
        math.sqrt(between_var),
        within_sd,
        agree,
        beyond,
        figures,
        expect,
    )


def no_change(results: Sequence[Replicated], sigmas: float = 2.0) -> str:
    """Outcome of "no compared network differs", from two-level results.

    Held if every result has at least two seeds and its mean lies within
    ``sigmas`` two-level standard errors of 0; did not hold if some result
    replicates a change (held or did not hold either way, every seed on
    one side); otherwise inconclusive (one seed, no data, or a mean beyond
    the error whose seeds disagree in sign). An absence holds more easily
    with few images and seeds: read it with the errors.

    >>> flat = [seed_figure(s, [0.1, -0.1, 0.05], expect="positive") for s in (0, 1)]
    >>> no_change([replicated(flat, expect="positive")])
    'held'
    """
    outcomes = []
    for r in results:
        if r.outcome != "inconclusive":
            outcomes.append("did not hold")
        elif len(r.seeds) < 2 or not math.isfinite(r.se):
            outcomes.append("inconclusive")
        elif abs(r.mean) <= sigmas * r.se:
            outcomes.append("held")
        else:
            outcomes.append("inconclusive")
    return all_of(outcomes) if outcomes else "inconclusive"


def all_of(outcomes: Sequence[str]) -> str:
    """Held if all held, did not hold if any did not hold, else inconclusive.

    >>> all_of(["held", "held"]), all_of(["held", "inconclusive"])
    ('held', 'inconclusive')
    """
    s = set(outcomes)
    if s == {"held"}:
        return "held"
    if "did not hold" in s:
        return "did not hold"
    return "inconclusive"


_RANK_TOL = 1e-9


def correlation_outcome(
    per_seed: Sequence[float],
    *,
    held_at: float = 0.8,
    min_items: bool = True,
    min_seeds: int = 2,
) -> str:
    """Outcome of a claimed positive (rank) correlation measured per seed.

    Held if there are at least ``min_seeds`` seeds, every seed's
    coefficient is positive and their mean is at least ``held_at``; did not
    hold if there are at least ``min_seeds`` seeds and every coefficient is
    at most 0; otherwise inconclusive (also with a NaN coefficient, or when
    ``min_items`` is False: too few networks to rank). ``min_seeds=1`` on
    the first seed's coefficient gives what that seed alone says.

    >>> correlation_outcome([0.9, 1.0]), correlation_outcome([1.0])
    ('held', 'inconclusive')
    >>> correlation_outcome([1.0], min_seeds=1)
    'held'
    >>> correlation_outcome([0.7999999999999999], min_seeds=1)  # 0.8, rounded
    'held'
    >>> correlation_outcome([-0.5, 0.0]), correlation_outcome([1.0, -0.4])
    ('did not hold', 'inconclusive')
    """
    r = np.asarray(per_seed, dtype=float)
    if not min_items or r.size < max(min_seeds, 1) or not np.isfinite(r).all():
        return "inconclusive"
    # Rank correlations of a few items take a few exact values (0.8 over 4
    # items), which the floating-point sums land just below.
    if (r > 0).all() and r.mean() >= held_at - _RANK_TOL:
        return "held"
    if (r <= 0).all():
        return "did not hold"
    return "inconclusive"
