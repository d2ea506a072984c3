"""Closed-form ridge readout: agreement with numpy least squares."""

from __future__ import annotations

import numpy as np
import pytest

from jax_infodiscard.training.ridge import (
    PENALTIES,
    choose_ridge,
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
