"""Adapters around user feature functions.

A feature function maps images ``(B, H, W, C)`` to ``{layer: pytree}`` with
leading axis ``B`` (see :mod:`jax_infodiscard.types`). The helpers here turn it
into the per-image quantities that the solvers need.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jax_infodiscard.types import Array, FeatureFn, PyTree


def resolve_layers(
    feature_fn: FeatureFn, images: Array, layers: Sequence[str] | str | None
) -> tuple[str, ...]:
    """Validates ``layers`` against the names that ``feature_fn`` returns.

    Args:
      feature_fn: the feature function.
      images: ``(B, H, W, C)`` images (only shapes are used).
      layers: a name, a sequence of names, or ``None`` for every layer.

    Returns:
      The tuple of layer names, in the order requested (``feature_fn``'s order
      for ``None``).
    """
    spec = jax.ShapeDtypeStruct((1, *images.shape[1:]), images.dtype)
    out = jax.eval_shape(feature_fn, spec)
    if not isinstance(out, dict) or not out:
        raise ValueError(
            "feature_fn must return a non-empty dict {layer_name: array}, got "
            f"{type(out).__name__}"
        )
    names = tuple(out)
    if layers is None:
        return names
    if isinstance(layers, str):
        layers = (layers,)
    layers = tuple(layers)
    if not layers:
        raise ValueError("layers must name at least one layer")
    unknown = [name for name in layers if name not in out]
    if unknown:
        raise ValueError(f"unknown layer name(s) {unknown}; available: {list(names)}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"duplicate layer names in {list(layers)}")
    for name in layers:
        for leaf in jax.tree.leaves(out[name]):
            if leaf.ndim < 1 or leaf.shape[0] != 1:
                raise ValueError(
                    f"layer {name!r}: every feature must have the batch as its "
                    f"leading axis; got shape {leaf.shape} for a batch of 1"
                )
    return layers


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


def distortion(feats: dict, base: dict, layers: tuple[str, ...]) -> Array:
    """``||h_l(x'_n) - f_l||^2`` for grouped features; returns ``(L, N)``."""
    return jnp.stack(
        [
            sq_norm(jax.tree.map(lambda a, b: a - b[None], feats[name], base[name]))
            for name in layers
        ]
    )
