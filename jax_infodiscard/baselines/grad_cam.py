"""Grad-CAM (Selvaraju et al., 2017) on a chosen layer.

With activations ``A (h, w, k)`` at the layer and the target logit ``y_t``,
the channel weights are the spatially averaged gradients
``alpha_k = mean_{i,j} d y_t / d A_{ijk}`` and the class map is
``ReLU(sum_k alpha_k A_{..k})`` (the paper's ReLU keeps the evidence *for*
the class), upsampled to the image size with :func:`jax.image.resize`.
Maps are not normalised.

The model is given split at the layer as ``(body_fn, head_fn)``; see
:func:`jax_infodiscard.baselines.common.as_layer_model`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jax_infodiscard.baselines import common
from jax_infodiscard.types import Array, PRNGKey

__all__ = ["explain"]

MODEL_CALLS = 1


@functools.partial(jax.jit, static_argnames=("relu", "resize_method"))
def _worker(body_fn, head_fn, images, target, relu, resize_method):
    acts = body_fn(images)
    logits, head_vjp = jax.vjp(head_fn, acts)
    target = common.resolve_target(target, logits)
    (grads,) = head_vjp(jax.nn.one_hot(target, logits.shape[-1], dtype=logits.dtype))
    weights = jnp.mean(grads, axis=(1, 2))
    low = jnp.einsum("bhwk,bk->bhw", acts, weights)
    if relu:
        low = jax.nn.relu(low)
    maps = common.upsample(low, images.shape[1:3], resize_method)
    extras = {
        "low_res": low,
        "channel_weights": weights,
        "logits": logits,
        "target": target,
    }
    return maps, extras


def explain(
    model: tuple,
    images: Array,
    key: PRNGKey | None = None,
    *,
    target: Array | None = None,
    relu: bool = True,
    resize_method: str = "bilinear",
) -> common.Explanation:
    """Grad-CAM class maps at the layer between ``body_fn`` and ``head_fn``.

    Args:
        model: ``(body_fn, head_fn)``: ``body_fn(images) -> (B, h, w, k)``
            activations, ``head_fn(activations) -> (B, K)`` logits.
        images: ``float32 (B, H, W, C)`` in ``[0, 1]``.
        key: unused (deterministic method).
        target: ``int (B,)`` class indices or ``None`` for the arg-max class.
        relu: apply the paper's ReLU to the class map.
        resize_method: :func:`jax.image.resize` method for upsampling.

    Returns:
        :class:`Explanation` with ``maps (B, H, W)`` (upsampled class maps,
        logit units per unit activation times activation), extras
        ``low_res (B, h, w)``, ``channel_weights (B, k)``, ``logits (B, K)``
        and ``target (B,)``; ``model_calls = 1`` (one forward pass and one
        backward pass through the head).

    Raises:
        ValueError: for a model that is not a pair of callables, activations
            that are not ``(B, h, w, k)``, malformed images or targets.
    """
    del key
    body_fn, head_fn = common.as_layer_model(model)
    images = common.check_images(images)
    classes = common.layer_num_classes(body_fn, head_fn, images)
    target = common.check_target(target, images.shape[0], classes)
    maps, extras = _worker(body_fn, head_fn, images, target, relu, resize_method)
    return common.Explanation(maps, extras, MODEL_CALLS, "grad_cam")
