"""A minimal sequential convnet description, for layer-wise relevance propagation.

A network is a tuple of layers applied in order to ``(B, H, W, C)`` images:

* :class:`Conv` — 2-D convolution, ``kernel (kh, kw, c_in, c_out)`` (HWIO),
  optional ``bias (c_out,)``, ``stride`` and ``padding`` (``"SAME"``,
  ``"VALID"`` or ``((top, bottom), (left, right))``);
* :class:`Dense` — ``kernel (d_in, d_out)``, optional ``bias (d_out,)``;
* :class:`ReLU`;
* :class:`MaxPool` / :class:`AvgPool` — ``window``, ``stride``, ``padding``
  (average pooling divides by the full window size, padding included);
* :class:`Flatten` — ``(B, h, w, c) -> (B, h * w * c)`` in NHWC order.

The layers are registered dataclass pytrees (arrays are leaves, strides and
paddings static), so a network can be passed through ``jax.jit`` and
``model_fn(layers)`` gives the ``jax.tree_util.Partial`` that every other
explainer accepts.

Converting a model: the forward pass must be exactly such a chain. Fold
inference-mode batch normalisation into the preceding convolution or dense
layer (``kernel * g``, ``(bias - mean) * g + offset`` with
``g = scale / sqrt(var + eps)``), drop dropout, and express global average
pooling as an :class:`AvgPool` over the whole feature map followed by
:class:`Flatten`. Residual connections, concatenations and attention cannot
be written as a sequence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from jax_infodiscard.types import Array

__all__ = [
    "AvgPool",
    "Conv",
    "Dense",
    "Flatten",
    "Layer",
    "MaxPool",
    "ReLU",
    "apply",
    "apply_layer",
    "model_fn",
]

Padding = str | tuple[tuple[int, int], tuple[int, int]]


_STATIC = {"static": True}  # dataclass-field metadata: not a pytree leaf


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Conv:
    """2-D convolution, NHWC input, HWIO ``kernel``, optional ``bias``."""

    kernel: Array
    bias: Array | None = None
    stride: tuple[int, int] = dataclasses.field(default=(1, 1), metadata=_STATIC)
    padding: Padding = dataclasses.field(default="SAME", metadata=_STATIC)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Dense:
    """Fully connected layer ``x @ kernel + bias`` on ``(B, d_in)``."""

    kernel: Array
    bias: Array | None = None


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ReLU:
    """Rectified linear unit."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MaxPool:
    """Spatial max pooling."""

    window: tuple[int, int] = dataclasses.field(default=(2, 2), metadata=_STATIC)
    stride: tuple[int, int] = dataclasses.field(default=(2, 2), metadata=_STATIC)
    padding: Padding = dataclasses.field(default="VALID", metadata=_STATIC)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AvgPool:
    """Spatial average pooling (sum over the window / window size)."""

    window: tuple[int, int] = dataclasses.field(default=(2, 2), metadata=_STATIC)
    stride: tuple[int, int] = dataclasses.field(default=(2, 2), metadata=_STATIC)
    padding: Padding = dataclasses.field(default="VALID", metadata=_STATIC)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Flatten:
    """``(B, h, w, c) -> (B, h * w * c)`` (row-major NHWC)."""


Layer = Conv | Dense | ReLU | MaxPool | AvgPool | Flatten
LINEAR_LAYERS = (Conv, Dense, AvgPool, MaxPool)
"""Layers whose relevance is redistributed by the epsilon rule (max pooling
through its gradient, i.e. winner-take-all)."""


def _pool_padding(padding: Padding) -> str | Sequence[tuple[int, int]]:
    if isinstance(padding, str):
        return padding
    return ((0, 0), *padding, (0, 0))


def apply_layer(layer: Layer, x: Array) -> Array:
    """Applies one layer to a batch ``x`` (``(B, H, W, C)`` or ``(B, D)``).

    Raises:
        ValueError: if the layer is not one of the supported types or the
            input rank does not fit it.
    """
    if isinstance(layer, Conv):
        _check_rank(layer, x, 4)
        out = jax.lax.conv_general_dilated(
            x,
            layer.kernel,
            tuple(layer.stride),
            layer.padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return out if layer.bias is None else out + layer.bias
    if isinstance(layer, Dense):
        _check_rank(layer, x, 2)
        out = x @ layer.kernel
        return out if layer.bias is None else out + layer.bias
    if isinstance(layer, ReLU):
        return jnp.maximum(x, 0)
    if isinstance(layer, MaxPool | AvgPool):
        _check_rank(layer, x, 4)
        dims = (1, *layer.window, 1)
        strides = (1, *layer.stride, 1)
        padding = _pool_padding(layer.padding)
        if isinstance(layer, MaxPool):
            if _tiles(layer, x):  # reshape + max: a much faster gradient on CPU
                b, h, w, c = x.shape
                kh, kw = layer.window
                return x.reshape(b, h // kh, kh, w // kw, kw, c).max(axis=(2, 4))
            return jax.lax.reduce_window(
                x, -jnp.inf, jax.lax.max, dims, strides, padding
            )
        total = jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, strides, padding)
        return total / (layer.window[0] * layer.window[1])
    if isinstance(layer, Flatten):
        return x.reshape(x.shape[0], -1)
    raise ValueError(f"unsupported layer type {type(layer).__name__}.")


def _tiles(layer: MaxPool, x: Array) -> bool:
    """Whether the pooling windows tile ``x`` exactly (no overlap, no padding)."""
    window, stride = tuple(layer.window), tuple(layer.stride)
    return (
        window == stride
        and layer.padding == "VALID"
        and x.shape[1] % window[0] == 0
        and x.shape[2] % window[1] == 0
    )


def _check_rank(layer: Layer, x: Array, rank: int) -> None:
    if x.ndim != rank:
        raise ValueError(
            f"{type(layer).__name__} expects a rank-{rank} input, got shape {x.shape}."
        )


def apply(layers: Sequence[Layer], images: Array) -> Array:
    """Runs the network: ``images (B, H, W, C) -> logits (B, K)``."""
    x = images
    for layer in layers:
        x = apply_layer(layer, x)
    return x


def model_fn(layers: Sequence[Layer]) -> Partial:
    """The network as a ``model_fn`` Partial (parameters stay traced leaves)."""
    return Partial(apply, tuple(layers))
