"""Vanilla gradient saliency (Simonyan, Vedaldi and Zisserman, 2014).

The map is ``max_c |d logit_t / d x_{h,w,c}|``: the largest gradient magnitude
over the colour channels of each pixel, as in the paper. The signed gradient
is kept in ``extras["gradients"]``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from jax_infodiscard.baselines import common
from jax_infodiscard.types import Array, PRNGKey

__all__ = ["explain"]

MODEL_CALLS = 1


@jax.jit
def _worker(model_fn, images, target):
    logits, target, gradients = common.target_gradient(model_fn, images, target)
    maps = common.reduce_abs_max(gradients)
    return maps, {"gradients": gradients, "logits": logits, "target": target}


def explain(
    model_fn: Callable[[Array], Array],
    images: Array,
    key: PRNGKey | None = None,
    *,
    target: Array | None = None,
) -> common.Explanation:
    """Gradient saliency of the target logit with respect to the input.

    Args:
        model_fn: ``model_fn(images (B, H, W, C)) -> logits (B, K)``; a
            :class:`jax.tree_util.Partial` carrying parameters is traced, not
            baked in.
        images: ``float32 (B, H, W, C)`` in ``[0, 1]``.
        key: unused (deterministic method); accepted for the common signature.
        target: ``int (B,)`` class indices or ``None`` for the arg-max class.

    Returns:
        :class:`Explanation` with ``maps (B, H, W) = max_c |gradient|`` and
        extras ``gradients (B, H, W, C)`` (signed, logit units per unit of
        intensity), ``logits (B, K)`` and ``target (B,)``; ``model_calls = 1``
        (one forward+backward pass, which also picks the arg-max class).

    Raises:
        ValueError: for images that are not ``(B, H, W, C)`` floats or a
            target of the wrong shape or out of range.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> w = jnp.arange(12.0).reshape(2, 2, 3, 1)
        >>> model = jax.tree_util.Partial(
        ...     lambda x: jnp.einsum("bhwc,hwck->bk", x, w))
        >>> out = explain(model, jnp.ones((1, 2, 2, 3)), target=[0])
        >>> out.maps.tolist()
        [[[2.0, 5.0], [8.0, 11.0]]]
    """
    del key
    model_fn = common.as_model_fn(model_fn)
    images = common.check_images(images)
    classes = common.num_classes(model_fn, images)
    target = common.check_target(target, images.shape[0], classes)
    maps, extras = _worker(model_fn, images, target)
    return common.Explanation(maps, extras, MODEL_CALLS, "gradient")
