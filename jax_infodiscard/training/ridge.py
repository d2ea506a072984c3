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
    "PENALTIES",
    "RidgeStats",
    "choose_ridge",
    "ridge_sse",
    "ridge_stats",
    "ridge_weights",
]

PENALTIES = tuple(10.0**e for e in np.arange(-6.0, 1.01, 0.5))
"""Ridge penalties tried, as multiples of the mean diagonal of ``G`` (the mean
squared input; 1e-6 to 10 in half decades)."""


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
