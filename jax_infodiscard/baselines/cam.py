"""Class activation maps (Zhou et al., 2016).

CAM needs a head made of global average pooling followed by one linear
layer, ``y = mean_{i,j} A_{ij.} @ W + b``. The class map of class ``t`` is
``sum_k W_{kt} A_{..k}`` (its spatial mean is ``y_t - b_t``); a ReLU keeps the
positive evidence (as Grad-CAM does, optional) and the map is upsampled to the
image size with :func:`jax.image.resize`.

The weights may be given; otherwise they are read off the head by one
backward pass (for such a head ``d y_t / d A_{ijk} = W_{kt} / (h w)`` at
every position). In both cases the head is validated on the actual
activations (``validate=True``): the gradient must be constant over
positions and ``head(A) - head(0)`` must equal ``mean_{ij}(A) @ W``;
otherwise a ``ValueError`` says that the head is not GAP + linear.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jax_infodiscard.baselines import common
from jax_infodiscard.types import Array, PRNGKey

__all__ = ["explain"]

MODEL_CALLS = 1
_TINY = 1e-12


@functools.partial(jax.jit, static_argnames=("relu", "resize_method"))
def _worker(body_fn, head_fn, images, target, weights, relu, resize_method):
    acts = body_fn(images)
    logits, head_vjp = jax.vjp(head_fn, acts)
    target = common.resolve_target(target, logits)
    (grads,) = head_vjp(jax.nn.one_hot(target, logits.shape[-1], dtype=logits.dtype))
    if weights is None:
        class_weights = jnp.sum(grads, axis=(1, 2))
    else:
        class_weights = weights[:, target].T
    low = jnp.einsum("bhwk,bk->bhw", acts, class_weights)

    # Validation residuals (relative): spatially constant gradient, and the
    # head's change from zero activations equals GAP(A) @ W for the target.
    mean_grad = jnp.mean(grads, axis=(1, 2), keepdims=True)
    spatial = jnp.max(jnp.abs(grads - mean_grad), axis=(1, 2, 3)) / (
        jnp.max(jnp.abs(mean_grad), axis=(1, 2, 3)) + _TINY
    )
    change = common.select_logit(logits - head_fn(jnp.zeros_like(acts)), target)
    linear = jnp.mean(low, axis=(1, 2))
    scale = jnp.mean(jnp.abs(acts), axis=(1, 2))
    affine = jnp.abs(change - linear) / (
        jnp.einsum("bk,bk->b", scale, jnp.abs(class_weights)) + _TINY
    )

    if relu:
        low = jax.nn.relu(low)
    maps = common.upsample(low, images.shape[1:3], resize_method)
    extras = {
        "low_res": low,
        "class_weights": class_weights,
        "logits": logits,
        "target": target,
        "spatial_residual": spatial,
        "affine_residual": affine,
    }
    return maps, extras


def explain(
    model: tuple,
    images: Array,
    key: PRNGKey | None = None,
    *,
    target: Array | None = None,
    weights: Array | None = None,
    relu: bool = True,
    validate: bool = True,
    rtol: float = 1e-3,
    resize_method: str = "bilinear",
) -> common.Explanation:
    """CAM class maps for a model whose head is GAP + linear.

    Args:
        model: ``(body_fn, head_fn)``: ``body_fn(images) -> (B, h, w, k)``
            activations (the last convolutional features), ``head_fn`` =
            global average pooling + linear layer ``-> (B, K)`` logits.
        images: ``float32 (B, H, W, C)`` in ``[0, 1]``.
        key: unused (deterministic method).
        target: ``int (B,)`` class indices or ``None`` for the arg-max class.
        weights: optional ``(k, K)`` weight matrix of the linear layer; read
            off the head when ``None``.
        relu: apply a ReLU to the class map.
        validate: check that the head is GAP + linear (see module docstring).
        rtol: relative tolerance of the validation.
        resize_method: :func:`jax.image.resize` method for upsampling.

    Returns:
        :class:`Explanation` with ``maps (B, H, W)``, extras ``low_res
        (B, h, w)``, ``class_weights (B, k)`` (``W[:, target]``), ``logits``,
        ``target`` and the validation residuals ``spatial_residual`` and
        ``affine_residual`` (``(B,)``, relative); ``model_calls = 1``.

    Raises:
        ValueError: for a head that is not GAP + linear (with
            ``validate=True``), weights of the wrong shape, malformed images or
            targets.
    """
    del key
    body_fn, head_fn = common.as_layer_model(model)
    images = common.check_images(images)
    classes = common.layer_num_classes(body_fn, head_fn, images)
    target = common.check_target(target, images.shape[0], classes)
    if weights is not None:
        weights = jnp.asarray(weights, jnp.float32)
        channels = jax.eval_shape(body_fn, images).shape[-1]
        if weights.shape != (channels, classes):
            raise ValueError(
                f"weights must have shape (k, K) = ({channels}, {classes}), got "
                f"{weights.shape}."
            )
    maps, extras = _worker(
        body_fn, head_fn, images, target, weights, relu, resize_method
    )
    if validate:
        spatial = float(np.max(extras["spatial_residual"]))
        affine = float(np.max(extras["affine_residual"]))
        if spatial > rtol or affine > rtol:
            raise ValueError(
                "CAM needs head_fn = global average pooling followed by a linear "
                f"layer: the head's gradient varies over positions by {spatial:.3g} "
                f"(relative) and head(A) - head(0) differs from GAP(A) @ W by "
                f"{affine:.3g} (relative; tolerance {rtol}). Use grad_cam for "
                "other heads."
            )
    return common.Explanation(maps, extras, MODEL_CALLS, "cam")
