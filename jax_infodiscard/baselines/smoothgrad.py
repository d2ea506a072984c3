"""SmoothGrad (Smilkov et al., 2017): gradients averaged over noisy copies.

``SG(x) = mean_n grad f_t(x + eps_n)`` with ``eps_n ~ N(0, s^2 I)`` and
``s = noise_level * (max(x) - min(x))`` per image (the paper's noise level,
default 15%). With ``squared=True`` the mean of squared gradients is taken
instead (the paper's "SmoothGrad-Squared" variant). The map follows the
gradient-saliency convention: ``max_c |SG|``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from jax_infodiscard.baselines import common
from jax_infodiscard.types import Array, PRNGKey

__all__ = ["SmoothGradConfig", "explain"]


@dataclasses.dataclass(frozen=True)
class SmoothGradConfig:
    """Static settings of SmoothGrad.

    Attributes:
        samples: noisy copies per image (``>= 1``).
        noise_level: noise standard deviation as a fraction of each image's
            intensity range ``max - min`` (``>= 0``).
        squared: average squared gradients instead of gradients.
        internal_batch_size: noisy copies evaluated together (each on the
            whole batch).
    """

    samples: int = 50
    noise_level: float = 0.15
    squared: bool = False
    internal_batch_size: int = 10

    def __post_init__(self):
        common.check_positive_int("samples", self.samples)
        common.check_positive_int("internal_batch_size", self.internal_batch_size)
        if not self.noise_level >= 0:
            raise ValueError(f"noise_level must be >= 0, got {self.noise_level}.")


@jax.jit
def _prepare(model_fn, images, target, noise_level):
    """Target (arg-max of one forward pass when ``None``) and the per-image
    noise scale ``noise_level * (max - min)``, ``(B, 1, 1, 1)``."""
    if target is None:
        target = common.resolve_target(None, model_fn(images))
    spread = jnp.max(images, axis=(1, 2, 3)) - jnp.min(images, axis=(1, 2, 3))
    return target, (noise_level * spread)[:, None, None, None]


@dataclasses.dataclass(frozen=True)
class _NoisyGradients:
    """Summed gradients (or squares) at a chunk of noisy copies of every image.

    Hashable, so that ``Partial(_NoisyGradients(squared), ...)`` hits the
    compilation cache of :func:`common.chunked_sum` on repeated calls.
    """

    squared: bool

    def __call__(self, model_fn, images, keys, scale, target, indices):
        """``indices (n,)`` int -> ``sum_k g_k`` ``(B, H, W, C)``; the ``n * B``
        noisy images go through the model as one batch."""
        n, shape = indices.shape[0], images.shape

        def noise(index):
            return jax.vmap(
                lambda k: common.flat_normal(
                    jax.random.fold_in(k, index), shape[1:], images.dtype
                )
            )(keys)

        noisy = images[None] + scale[None] * jax.vmap(noise)(indices)
        _, _, gradients = common.target_gradient(
            model_fn, noisy.reshape(n * shape[0], *shape[1:]), jnp.tile(target, n)
        )
        if self.squared:
            gradients = gradients**2
        return jnp.sum(gradients.reshape(n, *shape), axis=0)


@jax.jit
def _finish(total, samples):
    smooth = total / samples
    return common.reduce_abs_max(smooth), smooth


def _worker(model_fn, images, keys, target, config: SmoothGradConfig):
    """Maps ``(B, H, W)`` and extras; noisy copies in compiled chunks."""
    target, scale = _prepare(model_fn, images, target, config.noise_level)
    integrand = Partial(
        _NoisyGradients(config.squared), model_fn, images, keys, scale, target
    )
    total = common.chunked_sum(
        integrand,
        np.arange(config.samples, dtype=np.int32),
        config.internal_batch_size,
    )
    maps, smooth = _finish(total, config.samples)
    return maps, {"gradients": smooth, "target": target}


def explain(
    model_fn: Callable[[Array], Array],
    images: Array,
    key: PRNGKey,
    *,
    target: Array | None = None,
    samples: int = 50,
    noise_level: float = 0.15,
    squared: bool = False,
    internal_batch_size: int = 10,
) -> common.Explanation:
    """SmoothGrad saliency of the target logit.

    Args:
        model_fn: ``model_fn(images (B, H, W, C)) -> logits (B, K)``.
        images: ``float32 (B, H, W, C)`` in ``[0, 1]``.
        key: a ``jax.random.key`` or a ``(B,)`` batch of keys (one per image;
            then an image's noise does not depend on its batch mates).
        target: ``int (B,)`` class indices or ``None`` for the arg-max class of
            the clean image.
        samples: noisy copies per image.
        noise_level: noise standard deviation relative to the intensity range.
        squared: average squared gradients (SmoothGrad-Squared).
        internal_batch_size: noisy copies per vectorised chunk.

    Returns:
        :class:`Explanation` with ``maps (B, H, W) = max_c |mean gradient|``
        and extras ``gradients (B, H, W, C)`` (the averaged, signed gradients
        or averaged squares) and ``target (B,)``. ``model_calls = samples``,
        plus one forward pass when ``target`` is ``None``.

    Raises:
        ValueError: for malformed images, targets, keys or settings.
    """
    config = SmoothGradConfig(samples, noise_level, squared, internal_batch_size)
    model_fn = common.as_model_fn(model_fn)
    images = common.check_images(images)
    keys = common.image_keys(key, images.shape[0])
    classes = common.num_classes(model_fn, images)
    checked = common.check_target(target, images.shape[0], classes)
    maps, extras = _worker(model_fn, images, keys, checked, config)
    calls = config.samples + (1 if checked is None else 0)
    return common.Explanation(maps, extras, calls, "smoothgrad")
