"""Closed-form ridge regression from sufficient statistics.

The RU decoders start from a linear readout solved in one pass over the
training features (:func:`jax_infodiscard.training.decoder.train_decoders`):
for inputs ``P (n, d)`` and targets ``T (n, o)`` the ridge weights are

    ``W(lam) = (P^T P + lam I)^-1 P^T T``,

so the statistics ``G = P^T P``, ``B = P^T T`` and ``sum T**2`` (added up
batch by batch, :class:`RidgeStats`) are all that is needed, for every
penalty at once (one eigendecomposition of ``G``). The squared error of ``W``
on other data with statistics ``(G', B', t')`` is
``tr(W^T G' W) - 2 tr(W^T B') + t'``, so the penalty is chosen by held-out
error without another pass over the data (:func:`choose_ridge`).

Example:
    >>> rng = np.random.default_rng(0)
    >>> p = rng.normal(size=(200, 5))
    >>> t = p @ rng.normal(size=(5, 2)) + 0.1 * rng.normal(size=(200, 2))
    >>> fit, val = ridge_stats(p[:150], t[:150]), ridge_stats(p[150:], t[150:])
    >>> w, penalty, errors = choose_ridge(fit, val)
    >>> w.shape, bool(errors.min() < 0.02 * val.target_sq)
    ((5, 2), True)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "DUAL_PENALTIES",
    "PENALTIES",
    "RidgeStats",
    "choose_dual_ridge",
    "choose_ridge",
    "dual_ridge_errors",
    "ridge_sse",
    "ridge_stats",
    "ridge_weights",
]

PENALTIES = tuple(10.0**e for e in np.arange(-6.0, 1.01, 0.5))
"""Ridge penalties tried, as multiples of the mean diagonal of ``G`` (the mean
squared input; 1e-6 to 10 in half decades)."""

DUAL_PENALTIES = tuple(10.0**e for e in np.arange(-4.0, 3.01, 0.5))
"""Penalties of :func:`choose_dual_ridge`, as multiples of the mean diagonal
of the kernel ``P P^T`` (the mean squared norm of an input row; 1e-4 to 1e3
in half decades)."""


class RidgeStats(NamedTuple):
    """Sufficient statistics of a least-squares problem (float64 numpy).

    Attributes:
        gram: ``(d, d)`` ``P^T P``.
        cross: ``(d, o)`` ``P^T T``.
        target_sq: ``sum T**2`` (a float).
        count: rows of ``P`` (a float, for means).
    """

    gram: np.ndarray
    cross: np.ndarray
    target_sq: float
    count: float

    def __add__(self, other: RidgeStats) -> RidgeStats:  # type: ignore[override]
        return RidgeStats(
            self.gram + other.gram,
            self.cross + other.cross,
            self.target_sq + other.target_sq,
            self.count + other.count,
        )


def ridge_stats(inputs: np.ndarray, targets: np.ndarray) -> RidgeStats:
    """:class:`RidgeStats` of inputs ``(n, d)`` and targets ``(n, o)``."""
    p = np.asarray(inputs, np.float64)
    t = np.asarray(targets, np.float64)
    if p.ndim != 2 or t.ndim != 2 or p.shape[0] != t.shape[0]:
        raise ValueError(
            f"inputs and targets must be (n, d) and (n, o), got {p.shape} and {t.shape}"
        )
    return RidgeStats(p.T @ p, p.T @ t, float(np.sum(t * t)), float(p.shape[0]))


def ridge_weights(stats: RidgeStats, penalties: np.ndarray) -> np.ndarray:
    """Ridge weights ``(len(penalties), d, o)`` for absolute penalties.

    One symmetric eigendecomposition of ``G`` serves every penalty.
    """
    penalties = np.asarray(penalties, np.float64).reshape(-1)
    if np.any(penalties < 0) or not np.all(np.isfinite(penalties)):
        raise ValueError(f"penalties must be finite and >= 0, got {penalties}")
    evals, evecs = np.linalg.eigh(stats.gram)
    evals = np.maximum(evals, 0.0)
    rotated = evecs.T @ stats.cross  # (d, o)
    out = np.empty((penalties.size, *stats.cross.shape))
    for i, lam in enumerate(penalties):
        denom = evals + lam
        inv = np.divide(1.0, denom, out=np.zeros_like(denom), where=denom > 0)
        out[i] = evecs @ (inv[:, None] * rotated)
    return out


def ridge_sse(weights: np.ndarray, stats: RidgeStats) -> np.ndarray:
    """Sum of squared errors of ``weights`` (``(d, o)`` or ``(k, d, o)``) on
    the data behind ``stats``: ``tr(W^T G W) - 2 tr(W^T B) + sum T**2``."""
    w = np.asarray(weights, np.float64)
    gw = np.einsum("de,...eo->...do", stats.gram, w)
    quad = np.einsum("...do,...do->...", w, gw)
    lin = np.einsum("...do,do->...", w, stats.cross)
    return np.maximum(quad - 2.0 * lin + stats.target_sq, 0.0)


def choose_ridge(
    fit: RidgeStats,
    validation: RidgeStats,
    penalties: tuple[float, ...] = PENALTIES,
) -> tuple[np.ndarray, float, np.ndarray]:
    """Ridge weights with the penalty of least validation error, refitted on
    both parts.

    Args:
        fit: statistics of the data the candidate weights are fitted on.
        validation: statistics of held-back data that scores them.
        penalties: candidate penalties, relative to the mean diagonal of
            ``fit.gram``.

    Returns:
        ``(weights (d, o), penalty, errors)``: the weights solved from
        ``fit + validation`` at the chosen (absolute, rescaled to the pooled
        count) penalty, that penalty, and the validation SSE of every
        candidate ``(len(penalties),)``.
    """
    scale = float(np.mean(np.diag(fit.gram))) or 1.0
    absolute = scale * np.asarray(penalties, np.float64)
    errors = ridge_sse(ridge_weights(fit, absolute), validation)
    best = int(np.argmin(errors))
    pooled = fit + validation
    penalty = float(absolute[best] * pooled.count / max(fit.count, 1.0))
    return ridge_weights(pooled, np.array([penalty]))[0], penalty, errors


def dual_ridge_errors(
    kernel: np.ndarray,
    cross: np.ndarray,
    targets: np.ndarray,
    val_targets: np.ndarray,
    penalties: np.ndarray,
) -> np.ndarray:
    """Validation SSE of ridge regression in its dual form, for every penalty.

    With the kernel ``K = P P^T`` of ``n`` fitting rows, the dual weights
    ``A(lam) = (K + lam I)^-1 T`` predict ``C A(lam)`` for validation rows
    with ``C = P_val P^T``. With ``K = U diag(e) U^T``, ``M = C U`` and
    ``R = U^T T``, the error ``||M D R - T_val||^2`` with ``D = diag(1 / (e +
    lam))`` is ``d^T ((M^T M) * (R R^T)) d - 2 d^T rowsum((M^T T_val) * R) +
    ||T_val||^2``: after one pass of ``O(n^2 (v + o))`` every penalty costs
    ``O(n^2)``.

    Args:
        kernel: ``(n, n)`` ``P P^T`` of the fitting rows.
        cross: ``(v, n)`` ``P_val P^T``.
        targets: ``(n, o)`` fitting targets.
        val_targets: ``(v, o)`` validation targets.
        penalties: absolute penalties ``(k,)``.

    Returns:
        ``(k,)`` validation sums of squared errors (float64).

    >>> rng = np.random.default_rng(0)
    >>> p, q, t, tv = (rng.normal(size=s) for s in ((30, 8), (5, 8), (30, 2), (5, 2)))
    >>> err = dual_ridge_errors(p @ p.T, q @ p.T, t, tv, np.array([0.5]))[0]
    >>> direct = q @ p.T @ np.linalg.solve(p @ p.T + 0.5 * np.eye(30), t) - tv
    >>> bool(np.isclose(err, np.sum(direct**2)))
    True
    """
    evals, evecs = np.linalg.eigh(np.asarray(kernel, np.float64))
    evals = np.maximum(evals, 0.0)
    m = np.asarray(cross, np.float64) @ evecs  # (v, n)
    r = evecs.T @ np.asarray(targets, np.float64)  # (n, o)
    tv = np.asarray(val_targets, np.float64)
    quad = (m.T @ m) * (r @ r.T)  # (n, n)
    lin = np.sum((m.T @ tv) * r, axis=1)  # (n,)
    const = float(np.sum(tv * tv))
    out = np.empty(len(penalties))
    for i, lam in enumerate(np.asarray(penalties, np.float64)):
        denom = evals + lam
        dd = np.divide(1.0, denom, out=np.zeros_like(denom), where=denom > 0)
        out[i] = dd @ quad @ dd - 2.0 * dd @ lin + const
    return np.maximum(out, 0.0)


def choose_dual_ridge(
    inputs: np.ndarray,
    targets: np.ndarray,
    num_fit: int,
    penalties: tuple[float, ...] = DUAL_PENALTIES,
) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """Ridge regression with an intercept, solved in its dual form, its
    penalty chosen on held-back rows, for many more inputs than rows.

    The first ``num_fit`` rows fit the candidates, the others score them
    (:func:`dual_ridge_errors`); then the weights are refitted on all rows at
    the chosen penalty: ``W = P_c^T (P_c P_c^T + lam I)^-1 T_c`` with ``P_c``,
    ``T_c`` centred by their means, and intercept ``mean(T) - mean(P) W``.
    The large products run in float32, the decompositions in float64.

    Args:
        inputs: ``(n, d)`` rows.
        targets: ``(n, o)``.
        num_fit: rows that fit the candidates (``1 <= num_fit < n``).
        penalties: candidates, relative to the mean diagonal of the fitting
            rows' centred kernel (rescaled to ``n`` rows for the refit).

    Returns:
        ``(weights (d, o) float32, intercept (o,) float64, penalty, errors)``:
        the absolute penalty of the refit and the validation SSE of every
        candidate.

    >>> rng = np.random.default_rng(0)
    >>> p = rng.normal(size=(60, 200))
    >>> t = p[:, :3] + 1.0 + 0.1 * rng.normal(size=(60, 3))
    >>> w, b, lam, err = choose_dual_ridge(p, t, 45)
    >>> w.shape, bool(np.abs(b - 1.0).max() < 0.5)
    ((200, 3), True)
    """
    p = np.asarray(inputs, np.float32)
    t = np.asarray(targets, np.float64)
    n = p.shape[0]
    if p.ndim != 2 or t.ndim != 2 or t.shape[0] != n:
        raise ValueError(
            f"inputs and targets must be (n, d) and (n, o), got {p.shape} and {t.shape}"
        )
    if not 1 <= num_fit < n:
        raise ValueError(f"num_fit must be in [1, {n - 1}], got {num_fit}")
    fit_mean = p[:num_fit].mean(axis=0, dtype=np.float64).astype(np.float32)
    fit_p, val_p = p[:num_fit] - fit_mean, p[num_fit:] - fit_mean
    kernel = (fit_p @ fit_p.T).astype(np.float64)
    cross = (val_p @ fit_p.T).astype(np.float64)
    t_mean = t[:num_fit].mean(axis=0)
    scale = float(np.mean(np.diag(kernel))) or 1.0
    absolute = scale * np.asarray(penalties, np.float64)
    errors = dual_ridge_errors(
        kernel, cross, t[:num_fit] - t_mean, t[num_fit:] - t_mean, absolute
    )
    penalty = float(absolute[int(np.argmin(errors))] * n / num_fit)
    del fit_p, val_p, kernel, cross
    mean_p = p.mean(axis=0, dtype=np.float64)
    centred = p - mean_p.astype(np.float32)
    mean_t = t.mean(axis=0)
    kernel = (centred @ centred.T).astype(np.float64)
    kernel[np.diag_indices(n)] += penalty
    alpha = np.linalg.solve(kernel, t - mean_t).astype(np.float32)
    weights = centred.T @ alpha  # (d, o)
    intercept = mean_t - mean_p @ weights.astype(np.float64)
    return weights, intercept, penalty, errors
