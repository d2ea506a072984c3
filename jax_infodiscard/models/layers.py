"""Building blocks shared by the model zoo.

Every block is an ``nnx.Module`` whose call takes a float32 NHWC (or
``(B, D)``) array and a keyword-only ``train`` flag; ``train=False`` (the
default) runs BatchNorm on its running averages, so that the output for one
image never depends on the rest of the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jax_infodiscard.types import Array

__all__ = [
    "BasicBlock",
    "ConvBN",
    "Dense",
    "GlobalAvgPool",
    "InputNorm",
    "MaxPool",
    "UpConv",
]

# Untruncated normals: same variance as he_normal/lecun_normal, but the
# truncated-normal sampler takes seconds to compile on XLA:CPU per shape.
HE_INIT = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")
LECUN_INIT = nnx.initializers.variance_scaling(1.0, "fan_in", "normal")


class InputNorm(nnx.Module):
    """Learnable per-channel centring of unit-range inputs.

    ``y = (x - mean) * scale`` with ``mean`` a learnable ``(C,)`` parameter
    initialised at 0.5 and ``scale`` a fixed float (default 4, i.e. a unit
    range of width 1 becomes width 4).
    """

    def __init__(self, channels: int, *, scale: float = 4.0, rngs: nnx.Rngs):
        del rngs  # deterministic initialisation
        self.mean = nnx.Param(jnp.full((channels,), 0.5, jnp.float32))
        self.scale = float(scale)

    def __call__(self, x: Array) -> Array:
        """``x``: ``(B, H, W, C)`` float32 -> same shape."""
        return (x - self.mean[...]) * self.scale


class ConvBN(nnx.Module):
    """Convolution (no bias), BatchNorm, optional ReLU.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel: square kernel size.
        stride: spatial stride.
        relu: apply a ReLU after BatchNorm.
        rngs: parameter initialisation keys.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel: int = 3,
        stride: int = 1,
        relu: bool = True,
        rngs: nnx.Rngs,
    ):
        self.conv = nnx.Conv(
            in_channels,
            out_channels,
            (kernel, kernel),
            strides=stride,
            padding="SAME",
            use_bias=False,
            kernel_init=HE_INIT,
            rngs=rngs,
        )
        self.bn = nnx.BatchNorm(out_channels, momentum=0.9, rngs=rngs)
        self.relu = relu

    def __call__(self, x: Array, *, train: bool = False) -> Array:
        """``(B, H, W, Cin) -> (B, H/stride, W/stride, Cout)``."""
        h = self.bn(self.conv(x), use_running_average=not train)
        return jax.nn.relu(h) if self.relu else h


class MaxPool(nnx.Module):
    """Non-overlapping ``window x window`` max pooling.

    Written as a reshape and a max reduction: on XLA:CPU its gradient is
    faster than that of ``reduce_window``
    (``nnx.max_pool``). ``H`` and ``W`` must be multiples of ``window``.
    """

    def __init__(self, window: int = 2):
        self.window = window

    def __call__(self, x: Array, *, train: bool = False) -> Array:
        """``(B, H, W, C) -> (B, H/window, W/window, C)``."""
        del train
        b, h, w, c = x.shape
        k = self.window
        if h % k or w % k:
            raise ValueError(
                f"MaxPool({k}) needs H and W divisible by {k}, got {x.shape}"
            )
        return x.reshape(b, h // k, k, w // k, k, c).max(axis=(2, 4))


class GlobalAvgPool(nnx.Module):
    """Mean over the spatial axes: ``(B, H, W, C) -> (B, C)``."""

    def __call__(self, x: Array, *, train: bool = False) -> Array:
        del train
        return jnp.mean(x, axis=(1, 2))


class Dense(nnx.Module):
    """Flatten (if needed), linear map, optional ReLU: ``(B, ...) -> (B, out)``."""

    def __init__(self, in_features: int, out_features: int, *, relu: bool = True, rngs):
        init = HE_INIT if relu else LECUN_INIT
        self.linear = nnx.Linear(in_features, out_features, kernel_init=init, rngs=rngs)
        self.relu = relu

    def __call__(self, x: Array, *, train: bool = False) -> Array:
        del train
        h = self.linear(x.reshape(x.shape[0], -1))
        return jax.nn.relu(h) if self.relu else h


class BasicBlock(nnx.Module):
    """ResNet basic block: two 3x3 ConvBN, identity or 1x1-projection shortcut.

    ``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``; the shortcut is a
    strided 1x1 convolution with BatchNorm when the stride or the width
    changes (He et al. 2016 "option B").
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int, rngs):
        self.conv1 = ConvBN(in_channels, out_channels, stride=stride, rngs=rngs)
        self.conv2 = ConvBN(out_channels, out_channels, relu=False, rngs=rngs)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = ConvBN(
                in_channels,
                out_channels,
                kernel=1,
                stride=stride,
                relu=False,
                rngs=rngs,
            )
        else:
            self.shortcut = None

    def __call__(self, x: Array, *, train: bool = False) -> Array:
        """``(B, H, W, Cin) -> (B, H/stride, W/stride, Cout)``."""
        h = self.conv2(self.conv1(x, train=train), train=train)
        skip = x if self.shortcut is None else self.shortcut(x, train=train)
        return jax.nn.relu(h + skip)


class UpConv(nnx.Module):
    """Stride-2 transposed 3x3 convolution, BatchNorm, ReLU (doubles H and W)."""

    def __init__(self, in_channels: int, out_channels: int, *, rngs: nnx.Rngs):
        self.conv = nnx.ConvTranspose(
            in_channels,
            out_channels,
            (3, 3),
            strides=2,
            padding="SAME",
            use_bias=False,
            kernel_init=HE_INIT,
            rngs=rngs,
        )
        self.bn = nnx.BatchNorm(out_channels, momentum=0.9, rngs=rngs)

    def __call__(self, x: Array, *, train: bool = False) -> Array:
        """``(B, H, W, Cin) -> (B, 2H, 2W, Cout)``."""
        return jax.nn.relu(self.bn(self.conv(x), use_running_average=not train))
