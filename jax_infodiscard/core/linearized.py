"""Jacobian column norms for the linearised estimator (DESIGN.md sec. 3).

At small ``beta`` a network is locally linear, ``h(x + e) ~ f + J e``, and
the optimum of Eq. 3 is closed-form: ``sigma_i^2 = lambda delta_f^2 /
(2 a_i)`` with ``a_i`` the squared norm of the Jacobian columns of sigma entry
``i``. ``a_i = E_v[(J^T v)_i^2]`` for ``v ~ N(0, I)``, so ``K``
vector-Jacobian products give every column norm at once; a feature with at
most ``K`` entries uses the basis vectors instead, which is exact.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jax_infodiscard.core.features import image_features, normal
from jax_infodiscard.types import Array, FeatureFn, PRNGKey


def column_norms(
    feature_fn: FeatureFn,
    layer: str,
    x: Array,
    key: PRNGKey,
    num_probes: int,
    per_channel: bool,
) -> tuple[Array, int]:
    """Squared Jacobian column norms of one layer at one image.

    Args:
      feature_fn: feature function.
      layer: layer name.
      x: one image ``(H, W, C)``.
      key: PRNG key of the probes.
      num_probes: ``K``, the number of vector-Jacobian products.
      per_channel: ``True`` for one entry per input unit ``(H, W, C)``;
        otherwise channels are summed, ``(H, W)``.

    Returns:
      ``(a, passes)``: ``a`` of shape ``(H, W)`` or ``(H, W, C)`` (float32) and
      the number of backward passes used (``K``, or the feature size when the
      exact basis is used).
    """

    def flat_features(z):
        flat, _ = ravel_pytree(image_features(feature_fn, (layer,), z)[layer])
        return flat.astype(jnp.float32)

    flat, vjp = jax.vjp(flat_features, x)
    m = flat.shape[0]
    if m <= num_probes:
        probes, weight, passes = jnp.eye(m, dtype=flat.dtype), 1.0, m
    else:
        probes = normal(key, (num_probes, m), flat.dtype)
        weight, passes = 1.0 / num_probes, num_probes
    (cols,) = jax.vmap(vjp)(probes)  # (K, H, W, C)
    a = weight * jnp.sum(jnp.square(cols), axis=0)
    if not per_channel:
        a = jnp.sum(a, axis=-1)
    return a, passes


def linear_log_sigma(
    a: Array, scale: Array, log_lam: Array, log_min: float, log_max: float
) -> Array:
    """``log sigma_i = 0.5 log(lambda delta_f^2 / (2 a_i))``, clipped.

    Args:
      a: column norms ``(L, *S)``.
      scale: ``delta_f^2`` per layer ``(L,)``.
      log_lam: ``log lambda`` per layer ``(L,)``.
      log_min: lower clip of ``log sigma``.
      log_max: upper clip of ``log sigma`` (pixels with ``a_i = 0`` land here).

    Returns:
      ``(L, *S)`` float32.
    """
    expand = (slice(None),) + (None,) * (a.ndim - 1)
    num = jnp.log(scale)[expand] + log_lam[expand] - jnp.log(2.0)
    tiny = jnp.finfo(a.dtype).tiny
    u = 0.5 * (num - jnp.log(jnp.maximum(a, tiny)))
    return jnp.clip(u, log_min, log_max)
