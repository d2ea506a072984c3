"""The model zoo's plain convnets as sequential layer specs (for LRP).

:mod:`jax_infodiscard.baselines` never touches Flax: LRP-epsilon takes a
tuple of :mod:`~jax_infodiscard.baselines.sequential` layers. This adapter
(not imported by :mod:`jax_infodiscard.models` itself, so that the zoo does
not load the baselines) writes a zoo model in that form: :func:`to_sequential`
rewrites a ``convnet``, ``alexnet`` or ``vgg*`` model as a tuple of
sequential layers with the same inference-mode forward pass:

* the input centring ``(x - mean) * scale`` becomes a 1x1 convolution;
* ``ConvBN`` becomes one convolution with the BatchNorm running statistics
  folded in (``g = scale / sqrt(var + eps)``: kernel ``* g``, bias
  ``offset - mean * g``), followed by :class:`~sequential.ReLU` when the
  block has one;
* ``MaxPool(k)`` becomes a ``k x k`` stride-``k`` max pool, global average
  pooling an :class:`~sequential.AvgPool` over the whole map plus
  :class:`~sequential.Flatten`, and ``Dense`` a flatten (when needed), a dense
  layer and its ReLU.

ResNets (skip connections) and the U-Net cannot be written as a sequence.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jax_infodiscard.baselines import sequential
from jax_infodiscard.models.layers import ConvBN, Dense, GlobalAvgPool, MaxPool

__all__ = ["to_sequential"]


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _conv_bn(block: ConvBN) -> sequential.Conv:
    conv, bn = block.conv, block.bn
    if _pair(conv.kernel_dilation) != (1, 1) or conv.feature_group_count != 1:
        raise ValueError("dilated or grouped convolutions are not supported.")
    kernel = conv.kernel[...]
    bias = conv.bias[...] if conv.bias is not None else jnp.zeros(kernel.shape[-1])
    scale = bn.scale[...] if bn.scale is not None else jnp.ones_like(bn.mean[...])
    offset = bn.bias[...] if bn.bias is not None else jnp.zeros_like(bn.mean[...])
    gain = scale / jnp.sqrt(bn.var[...] + bn.epsilon)
    padding = conv.padding
    if not isinstance(padding, str):
        padding = tuple(tuple(p) for p in padding)
    return sequential.Conv(
        kernel * gain,
        (bias - bn.mean[...]) * gain + offset,
        stride=_pair(conv.strides),
        padding=padding,
    )


def to_sequential(model: nnx.Module) -> tuple[sequential.Layer, ...]:
    """The layers of a zoo ``convnet``/``alexnet``/``vgg`` model.

    Args:
        model: a :class:`~jax_infodiscard.models.LayeredModel` made only of
            ``ConvBN``, ``MaxPool``, ``GlobalAvgPool`` and ``Dense`` stages.

    Returns:
        A tuple of sequential layers; ``sequential.apply(layers, x)`` equals
        ``model(x)`` with BatchNorm on its running averages.

    Raises:
        ValueError: for a model with a stage that has no sequential form.
    """
    layers: list[sequential.Layer] = []
    norm = getattr(model, "input_norm", None)
    if norm is not None:
        mean = norm.mean[...]
        eye = jnp.eye(mean.shape[0], dtype=mean.dtype) * norm.scale
        layers.append(
            sequential.Conv(eye[None, None], -mean * norm.scale, padding="VALID")
        )
    side = model.image_size
    flat = False
    for name in model.stage_names:
        stage = getattr(model, name)
        if isinstance(stage, ConvBN):
            conv = _conv_bn(stage)
            layers.append(conv)
            if conv.padding == "SAME":
                side = -(-side // conv.stride[0])
            else:
                raise ValueError(f"stage {name!r}: only 'SAME' padding is supported.")
            if stage.relu:
                layers.append(sequential.ReLU())
        elif isinstance(stage, MaxPool):
            k = stage.window
            layers.append(sequential.MaxPool((k, k), (k, k), "VALID"))
            side //= k
        elif isinstance(stage, GlobalAvgPool):
            layers += [
                sequential.AvgPool((side, side), (side, side), "VALID"),
                sequential.Flatten(),
            ]
            flat = True
        elif isinstance(stage, Dense):
            if not flat:
                layers.append(sequential.Flatten())
                flat = True
            linear = stage.linear
            bias = linear.bias[...] if linear.bias is not None else None
            layers.append(sequential.Dense(linear.kernel[...], bias))
            if stage.relu:
                layers.append(sequential.ReLU())
        else:
            raise ValueError(
                f"stage {name!r} ({type(stage).__name__}) has no sequential form; "
                "LRP needs a plain chain of ConvBN, MaxPool, GlobalAvgPool and Dense."
            )
    return tuple(layers)
