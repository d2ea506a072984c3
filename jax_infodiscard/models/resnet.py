"""CIFAR ResNets (He et al. 2016, sec. 4.2) and a ResNet auto-encoder.

ResNet-``d`` with ``d = 6n + 2``: a 3x3 stem convolution (``conv1``, 16
channels), three stages of ``n`` basic blocks with 16, 32 and 64 channels
(the first block of stages 2 and 3 halves the side with stride 2), a global
average pool and a linear classifier. ResNet-20/32/44/56 have n = 3/5/7/9.
Shortcuts that change the shape are 1x1 convolutions with BatchNorm
("option B"); the others are identities.
"""

from __future__ import annotations

import jax
from flax import nnx

from jax_infodiscard.models.base import LayeredModel, check_image_size
from jax_infodiscard.models.layers import (
    LECUN_INIT,
    BasicBlock,
    ConvBN,
    Dense,
    GlobalAvgPool,
    UpConv,
)
from jax_infodiscard.types import Array

__all__ = ["ResNet", "ResNetAutoEncoder"]


def _blocks_per_stage(depth: int) -> int:
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(
            f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (20, 32, 44, ...), "
            f"got {depth!r}"
        )
    return (depth - 2) // 6


def _encoder_names(n: int) -> tuple[list[str], list[tuple[str, str]]]:
    stages = ["conv1"] + [f"block{s}_{b}" for s in (1, 2, 3) for b in range(1, n + 1)]
    aliases = [(f"stage{s}", f"block{s}_{n}") for s in (1, 2, 3)]
    return stages, aliases


def _build_encoder(model: LayeredModel, n: int, width: int, rngs: nnx.Rngs) -> int:
    """Adds ``conv1`` and the ``block*`` stages; returns the output channels."""
    model.conv1 = ConvBN(3, width, rngs=rngs)
    channels = width
    for s in (1, 2, 3):
        out = width * 2 ** (s - 1)
        for b in range(1, n + 1):
            stride = 2 if (s > 1 and b == 1) else 1
            setattr(
                model,
                f"block{s}_{b}",
                BasicBlock(channels, out, stride=stride, rngs=rngs),
            )
            channels = out
    return channels


class ResNet(LayeredModel):
    """CIFAR ResNet classifier.

    Layers: ``conv1`` ``(B, S, S, w)``; ``block{s}_{b}`` for stage
    ``s in 1..3`` and block ``b in 1..n`` (sides S, S/2, S/4; channels w, 2w,
    4w); aliases ``stage1..3`` for the last block of each stage; ``pool``
    ``(B, 4w)``; ``logits`` ``(B, num_classes)``. Default layers: ``conv1``,
    ``stage1``, ``stage2``, ``stage3``, ``logits``.

    Args:
        num_classes: number of classes.
        image_size: square side; a multiple of 4, at least 8.
        depth: 6n + 2 (20, 32, 44, 56, ...).
        width: channels of the first stage (16 in He et al.).
        normalize: learnable per-channel input centring.
        rngs: parameter initialisation keys.
    """

    def __init__(
        self,
        num_classes: int = 10,
        image_size: int = 32,
        *,
        depth: int = 20,
        width: int = 16,
        normalize: bool = True,
        rngs: nnx.Rngs,
    ):
        n = _blocks_per_stage(depth)
        arch = f"resnet{depth}"
        check_image_size(arch, image_size, 4, 8)
        stages, aliases = _encoder_names(n)
        self._setup(
            arch=arch,
            num_classes=num_classes,
            image_size=image_size,
            stage_names=(*stages, "pool", "logits"),
            aliases=aliases,
            default_layers=("conv1", "stage1", "stage2", "stage3", "logits"),
            normalize=normalize,
            model_kwargs={"width": width, "normalize": normalize},
            rngs=rngs,
        )
        channels = _build_encoder(self, n, width, rngs)
        self.pool = GlobalAvgPool()
        self.logits = Dense(channels, num_classes, relu=False, rngs=rngs)


class _Reconstruct(nnx.Module):
    """3x3 convolution to 3 channels and a sigmoid: images in ``(0, 1)``."""

    def __init__(self, in_channels: int, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(
            in_channels, 3, (3, 3), padding="SAME", kernel_init=LECUN_INIT, rngs=rngs
        )

    def __call__(self, x: Array, *, train: bool = False) -> Array:
        del train
        return jax.nn.sigmoid(self.conv(x))


class ResNetAutoEncoder(LayeredModel):
    """Auto-encoder whose encoder is a CIFAR ResNet without pool and classifier.

    Following the paper (sec. 4), the encoder is every ResNet layer before
    the classifier, here up to the last block (``(B, S/4, S/4, 4w)``; the
    global average pool is left out so that the code keeps its spatial
    layout). The decoder undoes the two downsamplings with stride-2
    transposed convolutions: ``dec1`` ``(B, S/2, S/2, 2w)``, ``dec2``
    ``(B, S, S, w)``, then ``recon``: a 3x3 convolution and a sigmoid,
    ``(B, S, S, 3)`` in ``(0, 1)``. ``__call__`` returns ``recon``; the
    model is trained with the mean squared reconstruction error.

    Args:
        num_classes: kept for a uniform interface (unused).
        image_size: square side; a multiple of 4, at least 8.
        depth: depth of the ResNet encoder, 6n + 2.
        width: channels of the first stage.
        normalize: learnable per-channel input centring.
        rngs: parameter initialisation keys.
    """

    task = "reconstruction"

    def __init__(
        self,
        num_classes: int = 10,
        image_size: int = 32,
        *,
        depth: int = 20,
        width: int = 16,
        normalize: bool = True,
        rngs: nnx.Rngs,
    ):
        n = _blocks_per_stage(depth)
        arch = f"resnet{depth}_ae"
        check_image_size(arch, image_size, 4, 8)
        stages, aliases = _encoder_names(n)
        self._setup(
            arch=arch,
            num_classes=num_classes,
            image_size=image_size,
            stage_names=(*stages, "dec1", "dec2", "recon"),
            aliases=aliases,
            default_layers=("conv1", "stage1", "stage2", "stage3", "dec1", "dec2"),
            normalize=normalize,
            model_kwargs={"width": width, "normalize": normalize},
            rngs=rngs,
        )
        channels = _build_encoder(self, n, width, rngs)
        self.dec1 = UpConv(channels, 2 * width, rngs=rngs)
        self.dec2 = UpConv(2 * width, width, rngs=rngs)
        self.recon = _Reconstruct(width, rngs=rngs)
