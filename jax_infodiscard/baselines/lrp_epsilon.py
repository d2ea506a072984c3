"""Layer-wise relevance propagation, epsilon rule (Bach et al., 2015).

For a sequential network (:mod:`jax_infodiscard.baselines.sequential`) the
relevance of the output is the target logit, ``R_out = y_t`` (all other
logits get zero). It is sent back layer by layer; through every linear
layer ``z = layer(x)`` (convolution, dense, average pooling, and max pooling
through its gradient, i.e. winner-take-all) the epsilon rule is applied with
JAX's VJP::

    s = R / (z + epsilon * sign(z))     (sign(0) := +1; 0 where the
                                         denominator is 0)
    c = vjp_x(layer)(s)                 (the transposed linear map)
    R_in = x * c

ReLU and flatten pass relevance through unchanged (reshaped). Relevance is
conserved up to what biases and ``epsilon`` absorb:
``sum(R_in) = sum_j R_j z_j^w / (z_j + eps sign z_j)`` with ``z^w`` the
bias-free part; ``extras["conservation_gap"] = sum(R_input) - y_t``. With
``epsilon = 0`` the rule is LRP-0, which for ReLU/max-pool networks equals
gradient x input. The epsilon rule is used at every layer, the input layer
included.

The map is the signed channel sum of the input relevance.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jax_infodiscard.baselines import common, sequential
from jax_infodiscard.types import Array, PRNGKey

__all__ = ["explain", "relevance"]

MODEL_CALLS = 1


def _epsilon_rule(layer, x: Array, relevance_out: Array, epsilon: float) -> Array:
    z, vjp = jax.vjp(lambda a: sequential.apply_layer(layer, a), x)
    denom = z + epsilon * jnp.where(z >= 0, 1.0, -1.0)
    safe = jnp.where(denom == 0, 1.0, denom)
    s = jnp.where(denom == 0, 0.0, relevance_out / safe)
    (c,) = vjp(s)
    return x * c


def relevance(
    layers: Sequence[sequential.Layer],
    images: Array,
    target: Array | None,
    epsilon: float,
) -> tuple[Array, Array, Array]:
    """Input relevance of the target logit (traceable; no validation).

    Args:
        layers: the network.
        images: ``float32 (B, H, W, C)``.
        target: ``int32 (B,)`` or ``None`` (arg-max).
        epsilon: stabiliser ``>= 0`` in logit units.

    Returns:
        ``(relevance (B, H, W, C), logits (B, K), target (B,))``.
    """
    inputs = []
    x = images
    for layer in layers:
        inputs.append(x)
        x = sequential.apply_layer(layer, x)
    logits = x
    target = common.resolve_target(target, logits)
    rel = jax.nn.one_hot(target, logits.shape[-1], dtype=logits.dtype) * logits
    for layer, x_in in zip(reversed(layers), reversed(inputs), strict=True):
        if isinstance(layer, sequential.LINEAR_LAYERS):
            rel = _epsilon_rule(layer, x_in, rel, epsilon)
        else:  # ReLU, Flatten
            rel = rel.reshape(x_in.shape)
    return rel, logits, target


@jax.jit
def _worker(layers, images, target, epsilon):
    rel, logits, target = relevance(layers, images, target, epsilon)
    out = common.select_logit(logits, target)
    extras = {
        "relevance": rel,
        "output_relevance": out,
        "conservation_gap": jnp.sum(rel, axis=(1, 2, 3)) - out,
        "logits": logits,
        "target": target,
    }
    return common.reduce_sum(rel), extras


def explain(
    layers: Sequence[sequential.Layer],
    images: Array,
    key: PRNGKey | None = None,
    *,
    target: Array | None = None,
    epsilon: float = 1e-6,
) -> common.Explanation:
    """LRP-epsilon relevance of the target logit for a sequential network.

    Args:
        layers: a sequence of :mod:`~jax_infodiscard.baselines.sequential`
            layers ending in logits ``(B, K)``.
        images: ``float32 (B, H, W, C)`` in ``[0, 1]``.
        key: unused (deterministic method).
        target: ``int (B,)`` class indices or ``None`` for the arg-max class.
        epsilon: stabiliser ``>= 0`` added to pre-activations (logit units of
            each layer); larger values absorb weak, contradictory relevance.

    Returns:
        :class:`Explanation` with ``maps (B, H, W)`` (signed channel sum of
        the relevance) and extras ``relevance (B, H, W, C)``,
        ``output_relevance (B,)`` (the target logit), ``conservation_gap
        (B,)``, ``logits (B, K)`` and ``target (B,)``; ``model_calls = 1``.

    Raises:
        ValueError: for unsupported layers, a network that does not end in
            ``(B, K)`` logits, malformed images or targets, or ``epsilon < 0``.
    """
    del key
    layers = tuple(layers)
    if not layers:
        raise ValueError("layers must contain at least one layer.")
    for layer in layers:
        if not isinstance(layer, sequential.Layer):
            raise ValueError(
                f"unsupported layer type {type(layer).__name__}; use the layers of "
                "jax_infodiscard.baselines.sequential."
            )
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}.")
    images = common.check_images(images)
    classes = common.num_classes(sequential.model_fn(layers), images)
    target = common.check_target(target, images.shape[0], classes)
    maps, extras = _worker(layers, images, target, jnp.float32(epsilon))
    return common.Explanation(maps, extras, MODEL_CALLS, "lrp_epsilon")
