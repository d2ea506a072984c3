"""Public entry points: :func:`cid` and :func:`feature_scale`."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp

from jax_infodiscard.config import CIDConfig
from jax_infodiscard.core import engine
from jax_infodiscard.core.features import (
    distortion,
    grouped_features,
    resolve_layers,
)
from jax_infodiscard.core.results import CIDResult
from jax_infodiscard.core.solver import Problem
from jax_infodiscard.types import Array, FeatureFn, PRNGKey
from jax_infodiscard.validation import as_partial, check_images, image_keys


def resolve_strategy(cfg: CIDConfig, num_layers: int) -> str:
    """The layer strategy: ``cfg.layer_strategy`` or the measured default.

    Measured with ``benchmarks/bench_cid.py`` (4-conv net, 32x32, CPU): the
    linearised method runs faster as one vmapped program (0.93 s vs 1.12 s for
    4 images x 4 layers) and compiles once; the optimising methods run faster
    with one program per layer on CPU (6.5 s vs 12.0 s for ``hybrid``), where
    XLA drops the part of the network above each layer. On accelerators the
    single vmapped program is used.
    """
    if cfg.layer_strategy != "auto":
        return cfg.layer_strategy
    if num_layers == 1 or cfg.method == "linearized":
        return "vmap"
    return "per_layer" if jax.default_backend() == "cpu" else "vmap"


def _cid_problem(feature_fn, extra, layers, x, base, scale) -> Problem:
    del extra

    def probe(xp):
        return distortion(grouped_features(feature_fn, layers, xp), base, layers), None

    return Problem(x=x, scale=scale, probe=probe, pixel_entropy=_log_sigma)


def _log_sigma(u, xp, aux):
    del xp, aux
    return u


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
    ``E||h(x') - f||^2`` equals ``beta * delta_f^2``. The pixel-wise CID is
    ``H_i = log sigma_i + 0.5 log(2 pi e)`` nats per input unit.

    Args:
      feature_fn: ``feature_fn(images (B, H, W, C)) -> {layer: (B, ...)}``;
        pure and batch-independent. Pass a :class:`jax.tree_util.Partial` to
        have its bound parameters traced rather than compiled in.
      images: ``(B, H, W, C)`` float images in ``[0, 1]``.
      key: a PRNG key (``jax.random.key``), or one key per image ``(B,)``.
        Image ``i`` uses ``fold_in(key, i)``.
      layers: layer names (default: every layer ``feature_fn`` returns).
      config: solver configuration.

    Returns:
      A :class:`CIDResult` with ``pixel (L, B, H, W)`` and friends.

    >>> import jax, jax.numpy as jnp
    >>> import jax_infodiscard as jid
    >>> w = jnp.linspace(0.5, 2.0, 4 * 4 * 3).reshape(4, 4, 3)
    >>> fn = lambda x: {"lin": x * w}
    >>> res = jid.cid(fn, jnp.zeros((1, 4, 4, 3)), jax.random.key(0))
    >>> res.pixel.shape, bool(res.converged.all())
    ((1, 1, 4, 4), True)
    """
    images = check_images(images)
    fn = as_partial(feature_fn)
    names = resolve_layers(fn, images, layers)
    keys = image_keys(key, images.shape[0])
    strategy = resolve_strategy(config, len(names))
    out = engine.run(_cid_problem, fn, None, images, keys, names, config, strategy)
    return assemble(CIDResult, names, out, config, images.shape[-1])


def assemble(cls, layers, out: dict, cfg: CIDConfig, channels: int):
    """Builds a result record from the engine's ``(L, B, ...)`` outputs."""
    pixel = out["pixel"]
    units = 1 if cfg.per_channel else channels
    spatial = tuple(range(2, pixel.ndim))
    return cls(
        layers=tuple(layers),
        pixel=pixel,
        mean=jnp.mean(pixel, axis=spatial),
        total=jnp.sum(pixel, axis=spatial) * units,
        sigma=jnp.exp(out["log_sigma"]),
        lam=out["lam"],
        budget=out["budget"],
        converged=out["converged"],
        passes=out["passes"],
        feature_scale=out["feature_scale"],
        capped=out["capped"],
        beta=float(cfg.beta),
        units=units,
    )


@partial(jax.jit, static_argnames=("layers", "method", "num_samples"))
def _scales(feature_fn, images, keys, *, layers, method, num_samples):
    def one(x, k):
        layer_keys = jax.vmap(lambda i: jax.random.fold_in(k, i))(
            jnp.arange(len(layers))
        )
        return engine.feature_scales(
            feature_fn, layers, x, layer_keys, method, num_samples
        )[0]

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
      key: a PRNG key or one per image; the draws are the ones :func:`cid`
        uses with the same key.
      layers: layer names (default: all).
      method: ``"jvp"`` (Jacobian-vector products) or ``"limit"``
        (finite differences at shrinking ``xi``, derivative-free).
      num_samples: noise directions ``K``.

    Returns:
      ``(L, B)`` float32.
    """
    if method not in ("jvp", "limit"):
        raise ValueError(f"method must be 'jvp' or 'limit', got {method!r}")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    images = check_images(images)
    fn = as_partial(feature_fn)
    names = resolve_layers(fn, images, layers)
    keys = image_keys(key, images.shape[0])
    return _scales(
        fn, images, keys, layers=names, method=method, num_samples=num_samples
    )
