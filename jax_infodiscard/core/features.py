"""Adapters around user feature functions.

A feature function maps images ``(B, H, W, C)`` to ``{layer: pytree}`` with
leading axis ``B`` (see :mod:`jax_infodiscard.types`). The helpers here turn it
into the per-image quantities that the solvers need.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

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
