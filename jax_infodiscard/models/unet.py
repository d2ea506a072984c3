"""A small U-Net with per-pixel class scores and an image-level head.

Encoder: two 3x3 ConvBN layers per level, 2x2 max pooling; decoder: stride-2
transposed convolution, concatenation with the encoder features of the same
side, two 3x3 ConvBN layers. The network outputs per-pixel class scores
(``pixel_logits``, segmentation-style); the image-level ``logits`` are their
spatial mean, so the U-Net trains as a classifier with image labels and its
per-pixel scores act as class activation maps.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jax_infodiscard.models.base import LayeredModel, check_image_size
from jax_infodiscard.models.layers import LECUN_INIT, ConvBN, MaxPool, UpConv
from jax_infodiscard.types import Array

__all__ = ["UNet"]

_LAYERS = (
    "enc1", "pool1", "enc2", "pool2", "bottleneck", "up2", "dec2", "up1", "dec1",
    "pixel_logits", "logits",
)  # fmt: skip


class _DoubleConv(nnx.Module):
    """Two 3x3 ConvBN+ReLU layers: ``(B, H, W, Cin) -> (B, H, W, Cout)``."""

    def __init__(self, in_channels: int, out_channels: int, *, rngs: nnx.Rngs):
        self.conv_a = ConvBN(in_channels, out_channels, rngs=rngs)
        self.conv_b = ConvBN(out_channels, out_channels, rngs=rngs)

    def __call__(self, x: Array, *, train: bool = False) -> Array:
        return self.conv_b(self.conv_a(x, train=train), train=train)


class UNet(LayeredModel):
    """Two-level U-Net (``w = width``, default 16; ``S`` the image side).

    Layers: ``enc1`` (S, w), ``pool1`` (S/2), ``enc2`` (S/2, 2w), ``pool2``
    (S/4), ``bottleneck`` (S/4, 4w), ``up2`` (S/2, 2w), ``dec2`` (S/2, 2w;
    from ``[up2, enc2]``), ``up1`` (S, w), ``dec1`` (S, w; from
    ``[up1, enc1]``), ``pixel_logits`` ``(B, S, S, num_classes)`` (1x1
    convolution), ``logits`` ``(B, num_classes)`` (spatial mean of
    ``pixel_logits``). Default layers: ``enc1``, ``enc2``, ``bottleneck``,
    ``dec2``, ``dec1``, ``logits``.

    The skip connections make the network non-sequential, so it cannot be
    cut into body and head (``split_fn`` raises ``ValueError``).

    Args:
        num_classes: number of classes.
        image_size: square side; a multiple of 4, at least 8.
        width: channels of the first level.
        normalize: learnable per-channel input centring.
        rngs: parameter initialisation keys.
    """

    sequential = False

    def __init__(
        self,
        num_classes: int = 10,
        image_size: int = 32,
        *,
        width: int = 16,
        normalize: bool = True,
        rngs: nnx.Rngs,
    ):
        check_image_size("unet", image_size, 4, 8)
        w = width
        self._setup(
            arch="unet",
            num_classes=num_classes,
            image_size=image_size,
            stage_names=_LAYERS,
            default_layers=("enc1", "enc2", "bottleneck", "dec2", "dec1", "logits"),
            normalize=normalize,
            model_kwargs={"width": width, "normalize": normalize},
            rngs=rngs,
        )
        self.enc1 = _DoubleConv(3, w, rngs=rngs)
        self.pool1 = MaxPool(2)
        self.enc2 = _DoubleConv(w, 2 * w, rngs=rngs)
        self.pool2 = MaxPool(2)
        self.bottleneck = _DoubleConv(2 * w, 4 * w, rngs=rngs)
        self.up2 = UpConv(4 * w, 2 * w, rngs=rngs)
        self.dec2 = _DoubleConv(4 * w, 2 * w, rngs=rngs)
        self.up1 = UpConv(2 * w, w, rngs=rngs)
        self.dec1 = _DoubleConv(2 * w, w, rngs=rngs)
        self.pixel_logits = nnx.Conv(
            w, num_classes, (1, 1), kernel_init=LECUN_INIT, rngs=rngs
        )

    def features(self, x: Array, *, train: bool = False) -> dict[str, Array]:
        """All named feature maps (see the class docstring for shapes).

        Args:
            x: float32 images ``(B, S, S, 3)`` in ``[0, 1]``.
            train: BatchNorm on batch statistics (default: running averages).

        Returns:
            ``{layer: array}`` for every name in :attr:`layer_names`.
        """
        out: dict[str, Array] = {}
        h = self._prepare(x)
        out["enc1"] = self.enc1(h, train=train)
        out["pool1"] = self.pool1(out["enc1"])
        out["enc2"] = self.enc2(out["pool1"], train=train)
        out["pool2"] = self.pool2(out["enc2"])
        out["bottleneck"] = self.bottleneck(out["pool2"], train=train)
        out["up2"] = self.up2(out["bottleneck"], train=train)
        cat2 = jnp.concatenate([out["up2"], out["enc2"]], axis=-1)
        out["dec2"] = self.dec2(cat2, train=train)
        out["up1"] = self.up1(out["dec2"], train=train)
        cat1 = jnp.concatenate([out["up1"], out["enc1"]], axis=-1)
        out["dec1"] = self.dec1(cat1, train=train)
        out["pixel_logits"] = self.pixel_logits(out["dec1"])
        out["logits"] = jnp.mean(out["pixel_logits"], axis=(1, 2))
        return out

    def __call__(self, x: Array, *, train: bool = False) -> Array:
        """Image-level logits ``(B, num_classes)``."""
        return self.features(x, train=train)["logits"]
