"""The two-level (seeds, images) verdict rule on numbers with known answers."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from jax_infodiscard.experiments.analyses.verdicts import (
    correlation_outcome,
    no_change,
    replicated,
    seed_figure,
)


def images_with(mean, sem, n=8, seed=0):
    """``n`` per-image differences whose mean and standard error are exact."""
    z = np.random.default_rng(seed).normal(size=n)
    z = (z - z.mean()) / z.std(ddof=1)
    return mean + sem * math.sqrt(n) * z


def figures(means, sems, seeds=None, expect="positive", **kw):
    seeds = range(len(means)) if seeds is None else seeds
    return [
        seed_figure(s, images_with(m, e, seed=s), expect=expect, **kw)
        for s, m, e in zip(seeds, means, sems, strict=True)
    ]


def test_seed_figure_is_the_per_image_mean_and_error():
    f = seed_figure(7, images_with(0.07, 0.023), expect="positive")
    assert f.seed == 7 and f.n == 8
    np.testing.assert_allclose([f.mean, f.sem, f.error], [0.07, 0.023, 0.023])
    assert f.outcome == "held"  # 3 SE over images
    # NaN images are dropped; the MC error is added in quadrature.
    d = np.r_[images_with(0.07, 0.023), np.nan]
    g = seed_figure(7, d, expect="positive", mc_errors=np.full(9, 0.04 * 8))
    assert g.n == 8
    np.testing.assert_allclose(g.mc, 0.04 * 8 * math.sqrt(8) / 8)
    np.testing.assert_allclose(g.error, math.hypot(0.023, g.mc))


def test_an_effect_consistent_over_seeds_holds():
    # The damage numbers (seeds 0, 1, 3, 4): one seed is within 2 SE
    # over its images, yet the effect replicates in size and sign.
    r = replicated(
        figures(
            [0.070, 0.107, 0.027, 0.064], [0.023, 0.025, 0.016, 0.019], (0, 1, 3, 4)
        ),
        expect="positive",
    )
    assert r.outcome == "held"
    means = np.array([0.070, 0.107, 0.027, 0.064])
    np.testing.assert_allclose(r.mean, means.mean())
    np.testing.assert_allclose(r.between_sd, means.std(ddof=1))
    np.testing.assert_allclose(r.se, means.std(ddof=1) / 2)  # between > within
    assert r.agree == 4 and r.beyond == 3 and r.alone == "held"
    assert [f.seed for f in r.seeds] == [0, 1, 3, 4]
    assert "seed 3: +0.027 ± 0.016" in r.text() and "4 of 4 seeds agree" in r.text()


def test_the_within_seed_error_is_a_floor():
    # Three seeds that agree by chance cannot claim more than their images.
    r = replicated(figures([0.04, 0.04, 0.04], [0.04, 0.04, 0.04]), expect="positive")
    np.testing.assert_allclose(r.between_sd, 0.0, atol=1e-12)
    np.testing.assert_allclose(r.se, 0.04 / math.sqrt(3))
    assert r.outcome == "inconclusive"  # 0.04 < 2 x 0.023
    assert r.within_sd == pytest.approx(0.04 * math.sqrt(8))


def test_an_effect_of_one_seed_only_does_not_hold():
    # The distillation case: seed 0 alone held, seed 1 shows nothing.
    r = replicated(figures([-0.047, 0.001], [0.012, 0.017]), expect="negative")
    assert r.alone == "held" and r.outcome == "inconclusive"
    # A large effect in one of three seeds, none in the others.
    r = replicated(figures([0.30, 0.001, -0.002], [0.01] * 3), expect="positive")
    assert r.seeds[0].outcome == "held" and r.outcome == "inconclusive"


def test_a_null_stays_inconclusive():
    r = replicated(figures([0.0, 0.0, 0.0], [0.02] * 3), expect="positive")
    assert r.outcome == "inconclusive"
    # Calibration: seed effects and images drawn from a null; "held" is rare.
    rng = np.random.default_rng(1)
    held = 0
    for _ in range(2000):
        figs = [
            seed_figure(s, rng.normal(rng.normal(0, 0.03), 0.1, 8), expect="positive")
            for s in range(3)
        ]
        held += replicated(figs, expect="positive").outcome == "held"
    assert held / 2000 < 0.05


def test_a_sign_flip_across_seeds_is_not_held():
    means = [0.3, 0.3, 0.3, 0.3, -0.01]
    r = replicated(figures(means, [0.005] * 5), expect="positive")
    assert r.mean > 2 * r.se  # the mean alone would pass
    assert r.agree == 4 and r.outcome == "inconclusive"
    # ... nor "did not hold" for the opposite claim.
    assert replicated(figures(means, [0.005] * 5), expect="negative").outcome == (
        "inconclusive"
    )


def test_a_consistent_opposite_effect_did_not_hold():
    r = replicated(figures([-0.1, -0.12, -0.09], [0.01] * 3), expect="positive")
    assert r.outcome == "did not hold" and r.agree == 0


def test_one_seed_never_decides_but_says_what_it_said():
    r = replicated(figures([0.5], [0.01], (3,)), expect="positive")
    assert r.outcome == "inconclusive" and r.alone == "held"
    assert math.isnan(r.se) and "seed 3" in r.text() and "not replicated" in r.text()


def test_the_monte_carlo_error_of_the_solve_is_folded_in():
    d = [images_with(m, 0.01, seed=s) for s, m in enumerate([0.1, 0.11, 0.09])]
    assert (
        replicated(
            [seed_figure(s, x, expect="positive") for s, x in enumerate(d)],
            expect="positive",
        ).outcome
        == "held"
    )
    noisy = [
        seed_figure(s, x, expect="positive", mc_errors=np.full(8, 0.5))
        for s, x in enumerate(d)
    ]
    r = replicated(noisy, expect="positive")
    np.testing.assert_allclose(
        r.se, math.hypot(0.01, 0.5 / math.sqrt(8)) / math.sqrt(3)
    )
    assert r.outcome == "inconclusive"


def test_a_seed_without_data_makes_the_verdict_inconclusive():
    figs = [
        *figures([0.1, 0.1], [0.01, 0.01]),
        seed_figure(2, [np.nan] * 8, expect="positive"),
    ]
    assert replicated(figs, expect="positive").outcome == "inconclusive"


def test_no_change_rule():
    flat = replicated(figures([0.01, -0.01, 0.0], [0.02] * 3), expect="positive")
    moved = replicated(figures([0.1, 0.12, 0.09], [0.01] * 3), expect="positive")
    one = replicated(figures([0.0], [0.02]), expect="positive")
    assert no_change([flat]) == "held"
    assert no_change([flat, moved]) == "did not hold"
    assert no_change([one]) == "inconclusive"
    assert no_change([]) == "inconclusive"


def test_correlation_outcome_counts_seeds():
    assert correlation_outcome([1.0, 0.9, 0.8]) == "held"
    assert correlation_outcome([1.0, 0.9, -0.2]) == "inconclusive"
    assert correlation_outcome([1.0]) == "inconclusive"
    assert correlation_outcome([-1.0, -0.4]) == "did not hold"
    assert correlation_outcome([1.0, 1.0], min_items=False) == "inconclusive"
    assert correlation_outcome([1.0, np.nan]) == "inconclusive"


def test_analyses_fold_in_the_mc_error_where_results_carry_one():
    # Results with and without ``mean_se`` (before and after the solver
    # reports it): the same differences, a larger error with it.
    from types import SimpleNamespace as NS

    from jax_infodiscard.experiments.analyses import comparisons, measuring

    rng = np.random.default_rng(0)
    layers = ("l1", "l2")
    shifts = {3: 0.05, 4: 0.06, 5: 0.04}

    def net(name, shift, seed, se):
        ones = np.ones((2, 8))
        cid = NS(
            mean=shift + 0.01 * rng.normal(size=(2, 8)),
            linearity=ones,
            entropy_gain=0 * ones,
            converged=ones > 0,
        )
        if se is not None:
            cid.mean_se = np.full((2, 8), se)
        m = measuring.Measured(name, layers, cid)
        m.info["seed"] = seed
        return m

    def verdict(se):
        groups = {
            "a": [net("a", 0.0, s, se) for s in shifts],
            "b": [net("b", d, s, se) for s, d in shifts.items()],
        }
        kw = dict(expect="positive", claim="b discards more", figure="Fig. 1")
        return comparisons.delta_verdict(groups, "a", "cid", layers, **kw)

    plain, numbers = verdict(None)
    assert plain.outcome == "held" and plain.alone == "held"
    assert plain.first_seed == 3 and "seed 5: " in plain.measured
    assert [f["mc"] for f in numbers["b"]["seeds"]] == [0.0] * 3
    noisy, numbers = verdict(0.2)
    # Per image: two layers, two networks, 0.2 each: sqrt(4 x 0.04) / 2.
    np.testing.assert_allclose(
        [f["mc"] for f in numbers["b"]["seeds"]], 0.2 / math.sqrt(8)
    )
    assert noisy.outcome == "inconclusive"


def test_the_report_gives_each_seed_the_spreads_and_what_the_first_seed_said():
    # A claim that seed 3 alone holds (a large effect) and seeds 4, 5 do not
    # show: the report must label the seeds as trained, give the between-
    # and within-seed SDs and the agreement, and put "seed 3 alone said:
    # held" beside the replicated "inconclusive".
    import json
    from types import SimpleNamespace as NS

    from jax_infodiscard.experiments.analyses import (
        AnalysisOptions,
        comparisons,
        measuring,
        verdict_table,
    )
    from jax_infodiscard.experiments.analyses.report import solver_record

    layers = ("l1",)
    shifts = {3: 0.30, 4: 0.001, 5: -0.002}

    def net(name, values, seed):
        ones = np.ones((1, 8))
        cid = NS(
            mean=np.asarray(values, float)[None],
            linearity=ones,
            entropy_gain=0 * ones,
            converged=ones > 0,
        )
        return measuring.Measured(name, layers, cid, info={"seed": seed})

    groups = {
        "a": [net("a", np.zeros(8), s) for s in shifts],
        "b": [net("b", images_with(d, 0.01, seed=s), s) for s, d in shifts.items()],
    }
    v, numbers = comparisons.delta_verdict(
        groups, "a", "cid", layers, expect="positive", claim="b more", figure="F"
    )
    assert (v.outcome, v.alone, v.first_seed) == ("inconclusive", "held", 3)
    row = numbers["b"]
    assert [f["seed"] for f in row["seeds"]] == [3, 4, 5]
    means = np.array(list(shifts.values()))
    np.testing.assert_allclose([f["mean"] for f in row["seeds"]], means)
    np.testing.assert_allclose(row["between_sd"], means.std(ddof=1))
    np.testing.assert_allclose(row["within_sd"], 0.01 * math.sqrt(8))
    assert (row["agree"], row["beyond"], row["alone"]) == (2, 1, "held")
    for text in (
        "seed 3: +0.300 ± 0.010",
        "seed 4: +0.001 ± 0.010",
        "seed 5: -0.002 ± 0.010",
        f"between-seed SD {means.std(ddof=1):.3f}",
        f"within-seed SD {0.01 * math.sqrt(8):.3f}",
        "2 of 3 seeds agree in sign",
    ):
        assert text in v.measured, text
    header, _, line = verdict_table([v]).splitlines()
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells[3:5] == ["verdict", "seed 3 alone said"]
    assert [c.strip() for c in line.strip("|").split("|")][3:5] == [
        "**inconclusive**",
        "held",
    ]
    # The solver configuration that ran is recorded in full, user changes kept.
    options = AnalysisOptions()
    options = dataclasses.replace(options, cid=options.cid.replace(beta=0.002))
    record = json.loads(json.dumps(solver_record(options)))
    assert record["beta"] == 0.002
    assert set(record) == {f.name for f in dataclasses.fields(options.cid)}


def test_a_rank_correlation_at_the_threshold_holds():
    # Over 4 networks Spearman's rho takes the exact value 0.8 (one swap),
    # which the floating-point computation returns as 0.7999999999999999:
    # the compression rerun's seed 0 (rho = +0.80) read "inconclusive".
    from jax_infodiscard.experiments.analyses.comparisons import spearman

    rho = spearman([1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0])
    assert rho == pytest.approx(0.8, abs=1e-12)
    assert correlation_outcome([rho], min_seeds=1) == "held"
    assert correlation_outcome([rho, rho]) == "held"
    assert correlation_outcome([0.79], min_seeds=1) == "inconclusive"
    assert correlation_outcome([rho, rho, -0.4]) == "inconclusive"


def test_ru_claims_average_only_the_layers_where_ru_was_solved():
    # RU is solved at the convolutional layers whose decoders recover the
    # image; elsewhere its rows are NaN. The claim must average, and divide
    # the MC error by, the solved layers only, and say which they are (the
    # adversarial rerun's report said "mean over 6 layers" for 4).
    from types import SimpleNamespace as NS

    from jax_infodiscard.experiments.analyses import comparisons, measuring

    layers = ("conv1", "conv2", "fc")

    def net(name, shift, seed):
        ones = np.ones((3, 8))
        cid = NS(mean=0 * ones, linearity=ones, entropy_gain=0 * ones)
        ru = NS(
            mean=np.stack([images_with(shift, 0.01, seed=seed)] * 2),
            mean_se=np.full((2, 8), 0.2),
        )
        m = measuring.Measured(name, layers, cid, ru=ru, info={"seed": seed})
        m.ru_layers = ("conv1", "conv2")
        return m

    groups = {
        "a": [net("a", 0.0, s) for s in (0, 1, 2)],
        "b": [net("b", 0.5, s) for s in (0, 1, 2)],
    }
    assert comparisons.measured_layers(groups["a"], "ru", layers) == [
        "conv1",
        "conv2",
    ]
    assert comparisons.measured_layers(groups["a"], "cid", layers) == list(layers)
    v, numbers = comparisons.delta_verdict(
        groups, "a", "ru", layers, expect="positive", claim="b more", figure="F"
    )
    assert numbers["b"]["layers"] == ["conv1", "conv2"]
    assert "mean over conv1, conv2)" in v.rule
    # Per image: two layers, two networks, 0.2 each: sqrt(4 x 0.04) / 2, over
    # the 8 images; dividing by the three layers would give 2/3 of it.
    np.testing.assert_allclose(
        [f["mc"] for f in numbers["b"]["seeds"]], 0.2 / math.sqrt(8)
    )
    np.testing.assert_allclose(
        [f["mean"] for f in numbers["b"]["seeds"]], 0.5, atol=0.02
    )
    # damage's case: in seeds 1 and 2 network b keeps no recoverable image
    # information at conv1 and conv2 (RU not solved there). Seed 0 still
    # counts, over its own layers, and the rule says so.
    for m in groups["b"][1:]:
        m.ru_layers = ()
        m.ru = NS(mean=np.zeros((0, 8)), mean_se=np.zeros((0, 8)))
    v, numbers = comparisons.delta_verdict(
        groups, "a", "ru", layers, expect="positive", claim="b more", figure="F"
    )
    assert "seed 0: +0.500" in v.measured and "RU not measured" not in v.measured
    assert "with ru in both networks of each seed" in v.rule
    assert (v.outcome, v.alone) == ("inconclusive", "held")
