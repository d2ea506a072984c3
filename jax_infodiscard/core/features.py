"""Adapters around user feature functions.

A feature function maps images ``(B, H, W, C)`` to ``{layer: pytree}`` with
leading axis ``B`` (see :mod:`jax_infodiscard.types`). The helpers here turn it
into the per-image quantities that the solvers need.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from jax_infodiscard.types import Array, FeatureFn, PyTree


def image_features(feature_fn: FeatureFn, layers: tuple[str, ...], x: Array) -> dict:
    """Features of one image ``x`` ``(H, W, C)``: ``{layer: pytree}`` without batch."""
    out = feature_fn(x[None])
    return {name: jax.tree.map(lambda a: a[0], out[name]) for name in layers}


def normal(key, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
    """Standard-normal draws of ``shape``, drawn flat and reshaped.

    Same distribution as ``jax.random.normal(key, shape)``; a flat draw
    compiles several times faster on CPU than a multi-dimensional one.
    """
    return jax.random.normal(key, (math.prod(shape),), dtype).reshape(shape)


def sq_norm(tree: PyTree) -> Array:
    """Squared L2 norm over every leaf and every axis except the leading one."""
    leaves = jax.tree.leaves(tree)
    return sum(
        jnp.sum(jnp.square(a.astype(jnp.float32)), axis=tuple(range(1, a.ndim)))
        for a in leaves
    )


def grouped_features(feature_fn: FeatureFn, layers: tuple[str, ...], xp: Array) -> dict:
    """Features of layer ``l`` evaluated on its own inputs ``xp[l]``.

    Args:
      feature_fn: the feature function.
      layers: ``L`` layer names.
      xp: ``(L, N, H, W, C)`` inputs; row ``l`` feeds layer ``l``.

    Returns:
      ``{layer_l: pytree with leading axis N}``. All ``L * N`` inputs go through
      the network as one batch.
    """
    num_layers, n = xp.shape[:2]
    out = feature_fn(xp.reshape(num_layers * n, *xp.shape[2:]))
    return {
        name: jax.tree.map(
            lambda a, l=l: a.reshape(num_layers, n, *a.shape[1:])[l], out[name]
        )
        for l, name in enumerate(layers)
    }


def deviations(
    feature_fn: FeatureFn,
    layers: tuple[str, ...],
    xp: Array,
    base: dict,
    feats: dict | None = None,
) -> tuple[PyTree, ...]:
    """``h_l(x'_n) - f_l`` for every layer: a tuple of ``L`` pytrees ``(N, ...)``.

    Args:
      feature_fn: the feature function.
      layers: ``L`` layer names.
      xp: ``(L, N, H, W, C)`` perturbed inputs; row ``l`` feeds layer ``l``.
      base: the clean features ``{layer: pytree}`` (no batch axis).
      feats: ``grouped_features(feature_fn, layers, xp)`` if already computed.
    """
    if feats is None:
        feats = grouped_features(feature_fn, layers, xp)
    return tuple(
        jax.tree.map(
            lambda a, b: a.astype(jnp.float32) - b.astype(jnp.float32)[None],
            feats[name],
            base[name],
        )
        for name in layers
    )


# ------------------------------------------------------- scale-free features
#
# CID and RU are invariant to a constant factor on a layer's features: the
# budget ``E||h(x') - f||^2 / delta_f^2`` is a ratio. Squared float32 features
# are not: features of 1e20 square to inf, features of 1e-20 to 0. Where a
# layer's features lie outside 2^+-24, the engine divides them by a power of
# two ``2^e_l`` chosen from one image, before anything is squared. A power of
# two scales products and sums exactly (no rounding), so the maps agree with
# those of unit-size features up to the rounding of a few logarithms. Ordinary
# features (within 2^+-24) are not touched and keep their exact numbers.

_MAX_EXPONENT = 100  # |e_l| <= 100 keeps 2^-e_l a normal float32
_SAFE_EXPONENT = 24  # features within 2^+-24 are left as they are


def _rms(tree: PyTree) -> float:
    """Root mean square of every entry of ``tree`` (host float64; NaN if none)."""
    leaves = [np.asarray(a, np.float64).ravel() for a in jax.tree.leaves(tree)]
    flat = np.concatenate(leaves) if leaves else np.zeros(0)
    if not flat.size or not np.isfinite(flat).all():
        return math.nan
    peak = float(np.max(np.abs(flat)))
    if peak == 0.0:
        return 0.0
    return peak * float(np.sqrt(np.mean(np.square(flat / peak))))


def _exponent(magnitude: float) -> int:
    """``round(log2(magnitude))`` clipped to ``[-100, 100]``.

    0 (no scaling) if ``magnitude`` is not positive, or within ``2^+-24``:
    there squares and sums of float32 features are safe, and ordinary
    networks keep the exact numbers of unscaled features.
    """
    if not (math.isfinite(magnitude) and magnitude > 0):
        return 0
    e = round(math.log2(magnitude))
    if abs(e) <= _SAFE_EXPONENT:
        return 0
    return int(min(max(e, -_MAX_EXPONENT), _MAX_EXPONENT))


def layer_exponents(
    feature_fn: FeatureFn, layers: tuple[str, ...], x: Array
) -> dict[str, int]:
    """The power of two ``e_l`` that brings layer ``l``'s features near 1.

    ``2^e_l`` is the root mean square of the features of image ``x``
    ``(H, W, C)``, rounded to a power of two; where they are all zero, that
    of one Jacobian-vector product (a fixed direction). Features within
    ``2^+-24`` and layers whose features are not all float32 keep
    ``e_l = 0`` (no scaling).

    >>> import jax.numpy as jnp
    >>> fn = lambda z: {"big": z * 1e20, "unit": z}
    >>> layer_exponents(fn, ("big", "unit"), jnp.full((2, 2, 1), 0.5))
    {'big': 65, 'unit': 0}
    """
    out = feature_fn(x[None])
    exps = {}
    for name in layers:
        leaves = jax.tree.leaves(out[name])
        if any(jnp.asarray(a).dtype != jnp.float32 for a in leaves):
            exps[name] = 0
            continue
        magnitude = _rms(out[name])
        if magnitude == 0.0:
            direction = jnp.cos(jnp.arange(x.size, dtype=jnp.float32)).reshape(x.shape)
            _, tangent = jax.jvp(
                lambda z, n=name: feature_fn(z)[n], (x[None],), (direction[None],)
            )
            magnitude = _rms(tangent)
        exps[name] = _exponent(magnitude)
    return exps


def _scaled_features(feature_fn: FeatureFn, factors: dict, images: Array) -> dict:
    out = dict(feature_fn(images))
    for name, f in factors.items():
        out[name] = jax.tree.map(lambda a, f=f: a * f.astype(a.dtype), out[name])
    return out


def _unscaled_decoder(decoder, factor: Array, feats: PyTree) -> Array:
    return decoder(jax.tree.map(lambda a: a * factor.astype(a.dtype), feats))


def normalise(
    feature_fn: FeatureFn,
    layers: tuple[str, ...],
    x: Array,
    decoders: dict | None = None,
) -> tuple[Partial, dict | None, np.ndarray]:
    """The feature function with each layer divided by its power of two.

    Args:
      feature_fn: the feature function (a :class:`Partial`).
      layers: ``L`` layer names.
      x: the image ``(H, W, C)`` the scales are taken from.
      decoders: RU's ``{layer: decoder}`` of the unscaled features, or
        ``None``; they are wrapped to undo the scaling of their input.

    Returns:
      ``(scaled_fn, scaled_decoders, scale)``: ``scale`` ``(L,)`` float64 is
      the factor ``2^e_l`` each layer was divided by (``delta_f^2`` of the
      scaled features times ``scale**2`` is that of ``feature_fn``). The
      factors are leaves of the returned :class:`Partial`, so different
      scales do not recompile.
    """
    exps = layer_exponents(feature_fn, layers, x)
    factors = {n: jnp.float32(2.0 ** -exps[n]) for n in layers if exps[n]}
    scale = np.array([2.0 ** exps[n] for n in layers], np.float64)
    if not factors:
        return feature_fn, decoders, scale
    fn = Partial(_scaled_features, feature_fn, factors)
    if decoders is not None:
        decoders = {
            name: Partial(_unscaled_decoder, dec, jnp.float32(2.0 ** exps[name]))
            if name in factors
            else dec
            for name, dec in decoders.items()
        }
    return fn, decoders, scale
