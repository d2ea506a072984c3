"""Gradient x input (Shrikumar et al., 2016).

Attributions ``a = x * d logit_t / d x``; the map is their signed sum over
channels. For a linear model without bias the attributions add up to
``f(x) - f(0)`` exactly.
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
    attributions = images * gradients
    maps = common.reduce_sum(attributions)
    return maps, {"attributions": attributions, "logits": logits, "target": target}


def explain(
    model_fn: Callable[[Array], Array],
    images: Array,
    key: PRNGKey | None = None,
    *,
    target: Array | None = None,
) -> common.Explanation:
    """Gradient times input for the target logit.

    Args:
        model_fn: ``model_fn(images (B, H, W, C)) -> logits (B, K)``.
        images: ``float32 (B, H, W, C)`` in ``[0, 1]``.
        key: unused (deterministic method).
        target: ``int (B,)`` class indices or ``None`` for the arg-max class.

    Returns:
        :class:`Explanation` with ``maps (B, H, W)`` = signed channel sum of
        the attributions (logit units), extras ``attributions (B, H, W, C)``,
        ``logits (B, K)``, ``target (B,)``; ``model_calls = 1``.

    Raises:
        ValueError: for malformed images or targets.
    """
    del key
    model_fn = common.as_model_fn(model_fn)
    images = common.check_images(images)
    classes = common.num_classes(model_fn, images)
    target = common.check_target(target, images.shape[0], classes)
    maps, extras = _worker(model_fn, images, target)
    return common.Explanation(maps, extras, MODEL_CALLS, "gradient_x_input")
