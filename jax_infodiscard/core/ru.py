"""Pixel-wise reconstruction uncertainty (RU, paper Eq. 6-7).

RU shares the whole CID machinery (feature scale, linearised warm start,
fixed-point solver, levelling, vmap over images and layers, sharding); only the
entropy term differs. For a decoder ``g_l`` trained to map ``h_l(x')`` back to
``x'``, the pixel-wise RU is

    Hhat_i(sigma) = 0.5 log E[(x_i - g_l(h_l(x'))_i)^2] + 0.5 log(2 pi e),

averaging the squared error over channels for a pixel-shared sigma, and sigma
maximises ``sum_i Hhat_i`` under the same budget ``r(sigma) = beta``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from jax.scipy.special import digamma

from jax_infodiscard.config import RUConfig
from jax_infodiscard.core import engine
from jax_infodiscard.core.features import deviations, grouped_features
from jax_infodiscard.core.results import RUResult
from jax_infodiscard.types import Array, FeatureFn, PRNGKey
from jax_infodiscard.validation import as_partial

DecoderFn = Callable[[Array], Array]
"""``decoder_fn(features (N, ...)) -> reconstructions (N, H, W, C)``."""


def _ru_deviations(feature_fn, decoders, layers, x, base):
    def dev(xp):
        feats = grouped_features(feature_fn, layers, xp)
        recon = jnp.stack([decoders[name](feats[name]) for name in layers])
        return deviations(feature_fn, layers, xp, base, feats=feats), recon

    return dev


def _ru_entropy(x):

    def entropy(u, recon):
        """``0.5 log E[(x - g(h(x')))^2]`` per entry, unbiased for Gaussian errors.

        The squared error is averaged over the ``N`` draws (and the channels of
        a pixel-shared sigma). ``0.5 log`` of a mean of ``k`` squared Gaussian
        errors reads ``0.5 (psi(k/2) - log(k/2))`` low on average (about
        ``-1 / (2k)``); that bias is added back with ``k = N/2`` draws per
        channel, the independent pairs of the antithetic draws (exact for a
        decoder that is linear over the noise, where a pair's errors are equal).
        """
        err = jnp.mean(jnp.square(recon - x), axis=1)  # (L, H, W, C)
        k = recon.shape[1] // 2
        if u.ndim == 3:  # pixel-shared sigma: average over channels
            err = jnp.mean(err, axis=-1)
            k = k * recon.shape[-1]
        bias = 0.5 * (digamma(k / 2.0) - jnp.log(k / 2.0))
        return 0.5 * jnp.log(jnp.maximum(err, jnp.finfo(jnp.float32).tiny)) - bias

    return entropy


RU = engine.Metric(
    name="ru", result=RUResult, deviations=_ru_deviations, entropy=_ru_entropy
)
"""RU: the entropy term is the decoder's reconstruction entropy."""


def check_decoders(
    feature_fn: FeatureFn,
    decoders,
    images: Array,
    layers: tuple[str, ...],
) -> dict:
    """Validates one decoder per layer against feature and image shapes."""
    if callable(decoders) and not isinstance(decoders, Mapping):
        if len(layers) != 1:
            raise ValueError(
                "a single decoder_fn serves one layer; pass a mapping "
                f"{{layer: decoder_fn}} for layers {list(layers)}"
            )
        decoders = {layers[0]: decoders}
    if not isinstance(decoders, Mapping):
        raise ValueError(
            "decoder_fn must be a callable or a mapping {layer: decoder_fn}, got "
            f"{type(decoders).__name__}"
        )
    missing = [name for name in layers if name not in decoders]
    if missing:
        raise ValueError(f"no decoder for layer(s) {missing}")
    out = {name: as_partial(decoders[name], f"decoder_fn[{name!r}]") for name in layers}
    spec = jax.ShapeDtypeStruct((2, *images.shape[1:]), images.dtype)
    feats = jax.eval_shape(feature_fn, spec)
    for name in layers:
        try:
            rec = jax.eval_shape(out[name], feats[name])
        except Exception as e:  # shape errors surface as various types
            raise ValueError(
                f"decoder for layer {name!r} fails on its features: {e}"
            ) from e
        want = (2, *images.shape[1:])
        if not hasattr(rec, "shape") or tuple(rec.shape) != want:
            got = getattr(rec, "shape", type(rec).__name__)
            raise ValueError(
                f"decoder for layer {name!r} returns shape {got}, expected the "
                f"image shape {want} (batch of 2)"
            )
        if not jnp.issubdtype(rec.dtype, jnp.floating):
            raise ValueError(
                f"decoder for layer {name!r} returns {rec.dtype}; it must return "
                "float images in the input's unit range"
            )
    clean = feature_fn(images[:2])
    for name in layers:
        rec = out[name](clean[name])
        if not bool(jnp.all(jnp.isfinite(rec))):
            raise ValueError(f"decoder for layer {name!r} returns NaN/inf values")
    return out


def ru(
    feature_fn: FeatureFn,
    decoder_fn: Mapping[str, DecoderFn] | DecoderFn,
    images,
    key: PRNGKey,
    *,
    layers: Sequence[str] | str | None = None,
    config: RUConfig = RUConfig(),
) -> RUResult:
    """Pixel-wise reconstruction uncertainty of each layer on each image.

    Args:
      feature_fn: ``feature_fn(images (B, H, W, C)) -> {layer: (B, ...)}``.
      decoder_fn: ``{layer: decoder}`` with ``decoder(features (N, ...)) ->
        (N, H, W, C)`` trained to reconstruct the (perturbed) input (see
        :func:`jax_infodiscard.training.decoder.train_decoder`); a single
        callable when one layer is requested.
      images: ``(B, H, W, C)`` float images in ``[0, 1]``.
      key: PRNG key, or one per image ``(B,)``.
      layers: layer names (default: the decoders' layers, in their order).
      config: :class:`RUConfig` (same fields as :class:`CIDConfig`).

    Returns:
      An :class:`RUResult`; ``pixel`` is ``Hhat_i`` at the solution, in nats.

    Raises:
      TypeError, ValueError: bad inputs (as :func:`cid`), a decoder missing
        for a layer, returning the wrong shape, a non-float dtype or NaN/inf.
    """
    if layers is None and isinstance(decoder_fn, Mapping):
        layers = [name for name in decoder_fn]
    return engine.compute(
        RU, feature_fn, images, key, layers, config, decoder_fn, check_decoders
    )
