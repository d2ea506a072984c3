"""Closed-form ridge readout: agreement with numpy least squares."""

from __future__ import annotations

import numpy as np
import pytest

from jax_infodiscard.training.ridge import (
    DUAL_PENALTIES,
    PENALTIES,
    choose_dual_ridge,
    choose_ridge,
    dual_ridge_errors,
    ridge_sse,
    ridge_stats,
    ridge_weights,
)


def _problem(n=300, d=12, o=4, noise=0.3, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.normal(size=(n, d)) * rng.uniform(0.1, 3.0, size=d)
    t = p @ rng.normal(size=(d, o)) + noise * rng.normal(size=(n, o))
    return p, t


@pytest.mark.parametrize("penalty", [0.0, 0.5, 40.0])
def test_ridge_weights_match_numpy_least_squares(penalty):
    # Ridge is least squares on the inputs stacked over sqrt(lam) I.
    p, t = _problem()
    stats = ridge_stats(p, t)
    w = ridge_weights(stats, np.array([penalty]))[0]
    d = p.shape[1]
    aug_p = np.concatenate([p, np.sqrt(penalty) * np.eye(d)])
    aug_t = np.concatenate([t, np.zeros((d, t.shape[1]))])
    expected, *_ = np.linalg.lstsq(aug_p, aug_t, rcond=None)
    np.testing.assert_allclose(w, expected, rtol=1e-8, atol=1e-10)


def test_statistics_add_up_and_sse_matches_direct_error():
    p, t = _problem()
    whole = ridge_stats(p, t)
    parts = ridge_stats(p[:100], t[:100]) + ridge_stats(p[100:], t[100:])
    for a, b in zip(whole, parts, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    w = np.random.default_rng(1).normal(size=(p.shape[1], t.shape[1]))
    np.testing.assert_allclose(
        ridge_sse(w, whole), np.sum((p @ w - t) ** 2), rtol=1e-10
    )


def test_choose_ridge_picks_the_penalty_of_least_validation_error():
    # Few rows, many noisy inputs: the least-squares fit overfits and a
    # larger penalty wins on the held-back rows.
    p, t = _problem(n=60, d=40, noise=3.0, seed=2)
    fit, val = ridge_stats(p[:45], t[:45]), ridge_stats(p[45:], t[45:])
    w, penalty, errors = choose_ridge(fit, val)
    assert errors.shape == (len(PENALTIES),)
    best = int(np.argmin(errors))
    assert 0 < best  # not the smallest penalty
    scale = np.mean(np.diag(fit.gram))
    np.testing.assert_allclose(penalty, PENALTIES[best] * scale * 60 / 45)
    # Refitted on all rows at that penalty.
    np.testing.assert_allclose(
        w, ridge_weights(fit + val, np.array([penalty]))[0], rtol=1e-10
    )


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="inputs and targets"):
        ridge_stats(np.zeros((3, 2)), np.zeros((4, 1)))
    with pytest.raises(ValueError, match="penalties"):
        ridge_weights(ridge_stats(*_problem()), np.array([-1.0]))


def test_dual_ridge_errors_match_direct_solves():
    rng = np.random.default_rng(3)
    p, q = rng.normal(size=(40, 90)), rng.normal(size=(15, 90))
    t, tv = rng.normal(size=(40, 5)), rng.normal(size=(15, 5))
    penalties = np.array([0.0, 0.3, 30.0, 3000.0])
    errors = dual_ridge_errors(p @ p.T, q @ p.T, t, tv, penalties)
    for lam, err in zip(penalties[1:], errors[1:], strict=True):
        alpha = np.linalg.solve(p @ p.T + lam * np.eye(40), t)
        np.testing.assert_allclose(err, np.sum((q @ p.T @ alpha - tv) ** 2), rtol=1e-8)
    # lam = 0 with more inputs than rows: the minimum-norm interpolant.
    direct = q @ np.linalg.pinv(p) @ t - tv
    np.testing.assert_allclose(errors[0], np.sum(direct**2), rtol=1e-6)


@pytest.mark.parametrize(("n", "d"), [(80, 12), (50, 300)])
def test_dual_ridge_matches_numpy_least_squares_with_intercept(n, d):
    # The dual solution at the chosen penalty is the primal ridge with an
    # unpenalised intercept: least squares on the centred inputs stacked over
    # sqrt(lam) I.
    p, t = _problem(n=n, d=d, o=3, noise=0.5, seed=4)
    t = t + np.array([1.0, -2.0, 0.5])
    w, b, lam, errors = choose_dual_ridge(p, t, (4 * n) // 5)
    assert errors.shape == (len(DUAL_PENALTIES),) and lam > 0
    pc, tc = p - p.mean(0), t - t.mean(0)
    aug_p = np.concatenate([pc, np.sqrt(lam) * np.eye(d)])
    aug_t = np.concatenate([tc, np.zeros((d, 3))])
    expected, *_ = np.linalg.lstsq(aug_p, aug_t, rcond=None)
    np.testing.assert_allclose(w, expected, rtol=2e-3, atol=2e-5)  # float32 products
    np.testing.assert_allclose(b, t.mean(0) - p.mean(0) @ expected, atol=1e-3)
    with pytest.raises(ValueError, match="num_fit"):
        choose_dual_ridge(p, t, n)
