"""Estimators of the feature scale ``delta_f^2`` (paper Eq. 3).

``delta_f^2(x) = lim_{xi -> 0} E||h(x + xi delta) - h(x)||^2 / xi^2`` equals
``||J||_F^2`` for differentiable ``h``. Two estimators, both per image and for
a group of ``L`` layers whose layer ``l`` uses its own noise draws
``deltas[l]``:

* :func:`jvp_scale`: ``mean_k ||J_l delta_lk||^2`` with Jacobian-vector
  products (no step size);
* :func:`limit_scale`: derivative-free finite differences at ``xi_0, xi_0/2,
  ...`` with antithetic draws and Richardson extrapolation, inside a
  ``lax.while_loop`` that stops when the relative change falls under ``tol``.

With the same draws, the two agree up to the discretisation error.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jax_infodiscard.core.features import grouped_features, image_features, sq_norm
from jax_infodiscard.core.linear import column_norms, feature_sizes
from jax_infodiscard.types import Array, FeatureFn


class LimitSettings(NamedTuple):
    """Settings of the finite-difference limit (hashable)."""

    xi0: float = 0.05
    tol: float = 1e-4
    max_halvings: int = 10


def jvp_scale(
    feature_fn: FeatureFn, layers: tuple[str, ...], x: Array, deltas: Array
) -> Array:
    """``delta_f^2`` per layer by Jacobian-vector products.

    Args:
      feature_fn: feature function.
      layers: ``L`` layer names.
      x: one image ``(H, W, C)``.
      deltas: ``(L, K, H, W, C)`` standard-normal directions; layer ``l`` uses
        ``deltas[l]``.

    Returns:
      ``(L,)`` float32, ``mean_k ||J_l deltas[l, k]||^2``. Costs ``K`` JVP
      passes per layer.
    """
    num_layers = len(layers)
    xs = jnp.broadcast_to(x, (num_layers, 1, *x.shape))

    def feats(z):
        return grouped_features(feature_fn, layers, z)

    _, lin = jax.linearize(feats, xs)
    tangents = jax.vmap(lin, in_axes=1)(deltas[:, :, None])  # {l: (K, 1, ...)}
    return jnp.stack(
        [
            jnp.mean(sq_norm(jax.tree.map(lambda a: a[:, 0], tangents[name])))
            for name in layers
        ]
    )


def limit_scale(
    feature_fn: FeatureFn,
    layers: tuple[str, ...],
    x: Array,
    deltas: Array,
    base: dict,
    settings: LimitSettings = LimitSettings(),
) -> tuple[Array, Array]:
    """``delta_f^2`` per layer by the finite-difference limit.

    ``g(xi) = mean_k ||h(x + xi d_k) - f||^2 / xi^2`` over antithetic pairs
    ``d = +-delta``; the Richardson estimate ``(4 g(xi/2) - g(xi)) / 3``
    removes the ``O(xi^2)`` term. ``xi`` halves until every layer's estimate
    changes by less than ``settings.tol`` (relative) or ``max_halvings`` is
    reached.

    Args:
      feature_fn: feature function.
      layers: ``L`` layer names.
      x: one image ``(H, W, C)``.
      deltas: ``(L, K, H, W, C)`` standard-normal directions.
      base: features of ``x``, ``{layer: pytree}``.
      settings: step sizes and tolerance.

    Returns:
      ``(scale (L,), passes)``: the estimate and the number of forward passes
      per layer (``2K`` per evaluated ``xi``).
    """
    d = jnp.concatenate([deltas, -deltas], axis=1)
    k2 = d.shape[1]

    def g(xi):
        feats = grouped_features(feature_fn, layers, x + xi * d)
        dist = jnp.stack(
            [
                sq_norm(jax.tree.map(lambda a, b: a - b[None], feats[n], base[n]))
                for n in layers
            ]
        )
        return jnp.mean(dist, axis=1) / xi**2

    xi0 = jnp.float32(settings.xi0)
    g0, g1 = g(xi0), g(xi0 / 2)
    est0 = (4 * g1 - g0) / 3

    def cond(s):
        it, _, _, _, change = s
        return (it < settings.max_halvings) & jnp.any(change > settings.tol)

    def body(s):
        it, xi, g_prev, est_prev, _ = s
        xi = xi / 2
        g_new = g(xi / 2)
        est = (4 * g_new - g_prev) / 3
        change = jnp.abs(est - est_prev) / jnp.maximum(jnp.abs(est), 1e-30)
        return it + 1, xi, g_new, est, change

    init = (jnp.int32(0), xi0, g1, est0, jnp.full(est0.shape, jnp.inf))
    it, _, _, est, _ = jax.lax.while_loop(cond, body, init)
    return est, (it + 2) * k2


def feature_scales(
    feature_fn: FeatureFn,
    layers: tuple[str, ...],
    x: Array,
    deltas: Array,
    method: str,
) -> Array:
    """``delta_f^2`` ``(L,)`` of one image by ``method`` (``"jvp"``/``"limit"``).

    With ``"jvp"``, a layer with at most ``K`` feature entries
    (``deltas`` is ``(L, K, H, W, C)``) is computed exactly from the basis
    (``||J||_F^2`` by vector-Jacobian products); the others use the ``K``
    random directions.
    """
    if method == "limit":
        base = image_features(feature_fn, layers, x)
        return limit_scale(feature_fn, layers, x, deltas, base)[0]
    num_samples = deltas.shape[1]
    sizes = feature_sizes(feature_fn, layers, x)
    mc = [l for l, m in enumerate(sizes) if m > num_samples]
    scale = [None] * len(layers)
    if mc:
        est = jvp_scale(
            feature_fn, tuple(layers[l] for l in mc), x, deltas[jnp.array(mc)]
        )
        for j, l in enumerate(mc):
            scale[l] = est[j]
    for l, m in enumerate(sizes):
        if m <= num_samples:
            scale[l] = jnp.sum(
                column_norms(feature_fn, layers[l], x, None, m, False)[0]
            )
    return jnp.stack(scale)
