"""Pixel-wise CID (paper Eq. 2-4): its entropy term and public entry points."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jax_infodiscard.config import CIDConfig
from jax_infodiscard.core import engine
from jax_infodiscard.core.feature_scale import feature_scales
from jax_infodiscard.core.features import deviations, normal, normalise
from jax_infodiscard.core.results import CIDResult
from jax_infodiscard.types import Array, FeatureFn, PRNGKey
from jax_infodiscard.validation import (
    as_partial,
    check_images,
    check_int,
    check_layers,
    image_keys,
)


def _cid_deviations(feature_fn, extra, layers, x, base):
    del extra

    def dev(xp):
        return deviations(feature_fn, layers, xp, base), None

    return dev


CID = engine.Metric(
    name="cid", result=CIDResult, deviations=_cid_deviations, entropy=None
)
"""CID: the entropy term is ``log sigma`` itself (``entropy=None``)."""


def cid(
    feature_fn: FeatureFn,
    images,
    key: PRNGKey,
    *,
    layers: Sequence[str] | str | None = None,
    config: CIDConfig = CIDConfig(),
) -> CIDResult:
    """Pixel-wise CID of every requested layer on every image.

    Solves paper Eq. 3-4 per image and per layer: the largest-entropy Gaussian
    input noise ``x' = x + sigma * delta`` whose feature change
    ``E||h(x') - f||^2`` equals ``beta * delta_f^2``, with ``f = h(x)``. The
    pixel-wise CID is ``H_i = log sigma_i + 0.5 log(2 pi e)`` nats per input
    unit. The result also says how linear the layer is over the noise
    (``linearity``, ``mean_shift``, ``entropy_gain``).

    Args:
      feature_fn: ``feature_fn(images (B, H, W, C)) -> {layer: (B, ...)}``;
        pure and batch-independent. Pass a :class:`jax.tree_util.Partial` to
        have its bound parameters traced rather than compiled in.
      images: ``(B, H, W, C)`` float images in ``[0, 1]``.
      key: a PRNG key (``jax.random.key``), or one key per image ``(B,)``.
        Image ``i`` uses ``fold_in(key, i)``; layer ``l`` of it
        ``fold_in(., crc32(l))``.
      layers: layer names (default: every layer ``feature_fn`` returns).
      config: solver configuration.

    Returns:
      A :class:`CIDResult` with ``pixel (L, B, H, W)`` and friends.

    Raises:
      TypeError, ValueError: bad images, key, layers or features (NaN/inf,
        integer-valued, batch-dependent, not depending on the input).

    >>> import jax, jax.numpy as jnp
    >>> import jax_infodiscard as jid
    >>> w = jnp.linspace(0.5, 2.0, 4 * 4 * 3).reshape(4, 4, 3)
    >>> fn = lambda x: {"lin": x * w}
    >>> res = jid.cid(fn, jnp.full((1, 4, 4, 3), 0.5), jax.random.key(0))
    >>> res.pixel.shape, bool(res.converged.all())
    ((1, 1, 4, 4), True)
    >>> round(float(res.linearity[0, 0]), 3)  # a linear feature: exactly 1
    1.0
    """
    return engine.compute(CID, feature_fn, images, key, layers, config)


@partial(jax.jit, static_argnames=("layers", "method", "num_samples"))
def _scales(feature_fn, images, keys, *, layers, method, num_samples):
    def one(x, k):
        def draws(name):
            kl = jax.random.fold_in(k, engine.layer_id(name))
            return normal(kl, (num_samples, *x.shape))

        deltas = jnp.stack([draws(name) for name in layers])
        return feature_scales(feature_fn, layers, x, deltas, method)

    return jax.vmap(one)(images, keys).T


def feature_scale(
    feature_fn: FeatureFn,
    images,
    key: PRNGKey,
    *,
    layers: Sequence[str] | str | None = None,
    method: str = "jvp",
    num_samples: int = 16,
) -> Array:
    """The feature scale ``delta_f^2`` of each layer at each image.

    ``delta_f^2(x) = lim_{xi->0} E||h(x + xi delta) - h(x)||^2 / xi^2``
    ``= ||J||_F^2``.

    Args:
      feature_fn: the feature function.
      images: ``(B, H, W, C)`` images.
      key: a PRNG key or one per image.
      layers: layer names (default: all).
      method: ``"jvp"`` (Jacobian-vector products; a layer with at most
        ``num_samples`` entries is computed exactly from the basis) or
        ``"limit"`` (finite differences at shrinking ``xi``, derivative-free).
      num_samples: noise directions ``K``.

    Returns:
      ``(L, B)`` float64 (NumPy), in the units of the features squared; the
      features are rescaled by a power of two per layer inside, so features
      near float32's limits neither overflow nor underflow.
    """
    if method not in ("jvp", "limit"):
        raise ValueError(f"method must be 'jvp' or 'limit', got {method!r}")
    num_samples = check_int("num_samples", num_samples)
    images = check_images(images)
    fn = as_partial(feature_fn)
    names = check_layers(fn, images, layers)
    keys = image_keys(key, images.shape[0])
    # Scale-free features (a power of two per layer, exact in float), so that
    # delta_f^2 is computed without overflow or underflow, then back to the
    # user's units in float64.
    fn, _, scale = normalise(fn, names, images[0])
    scales = _scales(
        fn, images, keys, layers=names, method=method, num_samples=num_samples
    )
    return np.asarray(scales, np.float64) * (scale[:, None] ** 2)
