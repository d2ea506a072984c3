"""Plain convolutional networks: a tiny ConvNet, AlexNet- and VGG-style nets.

All are chains of named stages (see :class:`LayeredModel`); every
convolution is followed by BatchNorm and ReLU, the named output of a
``conv*`` layer is the post-ReLU activation. Widths are scaled down from the
ImageNet originals so that the nets train in minutes on a CPU; ``width``
multiplies every layer.
"""

from __future__ import annotations

from flax import nnx

from jax_infodiscard.models.base import LayeredModel, check_image_size
from jax_infodiscard.models.layers import ConvBN, Dense, GlobalAvgPool, MaxPool

__all__ = ["VGG", "VGG_CONFIGS", "AlexNet", "ConvNet"]


class ConvNet(LayeredModel):
    """Small five-layer ConvNet for quick demos.

    Layers (``w = width``, default 16; ``S`` the image side): ``conv1`` (w, S)
    -> ``pool1`` (S/2) -> ``conv2``, ``conv3`` (2w) -> ``pool2`` (S/4) ->
    ``conv4``, ``conv5`` (4w) -> ``pool3`` (global average, ``(B, 4w)``) ->
    ``logits`` ``(B, num_classes)``. Default layers: ``conv1``, ``conv3``,
    ``conv5``, ``logits``.

    Args:
        num_classes: number of classes.
        image_size: square side; a multiple of 4, at least 8.
        width: channels of the first layer.
        normalize: learnable per-channel input centring.
        rngs: parameter initialisation keys.
    """

    def __init__(
        self,
        num_classes: int = 10,
        image_size: int = 32,
        *,
        width: int = 16,
        normalize: bool = True,
        rngs: nnx.Rngs,
    ):
        check_image_size("convnet", image_size, 4, 8)
        w = width
        self._setup(
            arch="convnet",
            num_classes=num_classes,
            image_size=image_size,
            stage_names=(
                "conv1",
                "pool1",
                "conv2",
                "conv3",
                "pool2",
                "conv4",
                "conv5",
                "pool3",
                "logits",
            ),
            default_layers=("conv1", "conv3", "conv5", "logits"),
            normalize=normalize,
            model_kwargs={"width": width, "normalize": normalize},
            rngs=rngs,
        )
        self.conv1 = ConvBN(3, w, rngs=rngs)
        self.pool1 = MaxPool(2)
        self.conv2 = ConvBN(w, 2 * w, rngs=rngs)
        self.conv3 = ConvBN(2 * w, 2 * w, rngs=rngs)
        self.pool2 = MaxPool(2)
        self.conv4 = ConvBN(2 * w, 4 * w, rngs=rngs)
        self.conv5 = ConvBN(4 * w, 4 * w, rngs=rngs)
        self.pool3 = GlobalAvgPool()
        self.logits = Dense(4 * w, num_classes, relu=False, rngs=rngs)


class AlexNet(LayeredModel):
    """AlexNet-style net sized for 32x32 inputs (also 64x64: any multiple of 8).

    Layers (``w = width``, default 32; ``S`` the image side):
    ``conv1`` 5x5, w, S -> ``pool1`` S/2 -> ``conv2`` 5x5, 2w -> ``pool2`` S/4
    -> ``conv3`` 3x3, 3w -> ``conv4`` 3x3, 3w -> ``conv5`` 3x3, 2w ->
    ``pool5`` S/8 -> ``fc1`` 8w -> ``fc2`` 8w -> ``logits``.

    Args:
        num_classes: number of classes.
        image_size: square side; a multiple of 8, at least 8.
        width: channels of ``conv1``.
        normalize: learnable per-channel input centring.
        rngs: parameter initialisation keys.
    """

    def __init__(
        self,
        num_classes: int = 10,
        image_size: int = 32,
        *,
        width: int = 32,
        normalize: bool = True,
        rngs: nnx.Rngs,
    ):
        check_image_size("alexnet", image_size, 8, 8)
        w = width
        self._setup(
            arch="alexnet",
            num_classes=num_classes,
            image_size=image_size,
            stage_names=(
                "conv1",
                "pool1",
                "conv2",
                "pool2",
                "conv3",
                "conv4",
                "conv5",
                "pool5",
                "fc1",
                "fc2",
                "logits",
            ),
            default_layers=("conv1", "conv2", "conv3", "conv5", "fc1", "logits"),
            normalize=normalize,
            model_kwargs={"width": width, "normalize": normalize},
            rngs=rngs,
        )
        side = image_size // 8
        self.conv1 = ConvBN(3, w, kernel=5, rngs=rngs)
        self.pool1 = MaxPool(2)
        self.conv2 = ConvBN(w, 2 * w, kernel=5, rngs=rngs)
        self.pool2 = MaxPool(2)
        self.conv3 = ConvBN(2 * w, 3 * w, rngs=rngs)
        self.conv4 = ConvBN(3 * w, 3 * w, rngs=rngs)
        self.conv5 = ConvBN(3 * w, 2 * w, rngs=rngs)
        self.pool5 = MaxPool(2)
        self.fc1 = Dense(side * side * 2 * w, 8 * w, rngs=rngs)
        self.fc2 = Dense(8 * w, 8 * w, rngs=rngs)
        self.logits = Dense(8 * w, num_classes, relu=False, rngs=rngs)


VGG_CONFIGS: dict[int, tuple[tuple[int, ...], ...]] = {
    11: ((1,), (2,), (4, 4), (8, 8), (8, 8)),
    13: ((1, 1), (2, 2), (4, 4), (8, 8), (8, 8)),
    16: ((1, 1), (2, 2), (4, 4, 4), (8, 8, 8), (8, 8, 8)),
}
"""Per block, the width multiple of each 3x3 convolution (VGG "A", "B", "D")."""


class VGG(LayeredModel):
    """VGG-style net: five blocks of 3x3 ConvBN layers, each ending in a pool.

    Layers: in block ``b`` the convolutions are ``conv{b}`` when the block has
    one, else ``conv{b}_1``, ``conv{b}_2``, ...; then ``pool{b}`` (2x2 max);
    after block 5 (side ``S/32``): ``fc1`` (8w) and ``logits``. Widths are
    ``w * (1, 2, 4, 8, 8)`` per block, ``w = width`` (default 16, i.e. 1/4 of
    the original VGG).

    Args:
        num_classes: number of classes.
        image_size: square side; a multiple of 32, at least 32.
        depth: 11, 13 or 16 (the VGG configurations A, B, D).
        width: channels of the first block.
        normalize: learnable per-channel input centring.
        rngs: parameter initialisation keys.
    """

    def __init__(
        self,
        num_classes: int = 10,
        image_size: int = 32,
        *,
        depth: int = 11,
        width: int = 16,
        normalize: bool = True,
        rngs: nnx.Rngs,
    ):
        if depth not in VGG_CONFIGS:
            raise ValueError(
                f"VGG depth must be one of {sorted(VGG_CONFIGS)}, got {depth}"
            )
        arch = f"vgg{depth}"
        check_image_size(arch, image_size, 32, 32)
        config = VGG_CONFIGS[depth]
        stages: list[str] = []
        last_convs: list[str] = []
        for b, block in enumerate(config, start=1):
            names = (
                [f"conv{b}"]
                if len(block) == 1
                else [f"conv{b}_{j}" for j in range(1, len(block) + 1)]
            )
            stages += [*names, f"pool{b}"]
            last_convs.append(names[-1])
        stages += ["fc1", "logits"]
        self._setup(
            arch=arch,
            num_classes=num_classes,
            image_size=image_size,
            stage_names=stages,
            default_layers=(*last_convs, "logits"),
            normalize=normalize,
            model_kwargs={"width": width, "normalize": normalize},
            rngs=rngs,
        )
        channels = 3
        for b, block in enumerate(config, start=1):
            for j, mult in enumerate(block, start=1):
                name = f"conv{b}" if len(block) == 1 else f"conv{b}_{j}"
                setattr(self, name, ConvBN(channels, mult * width, rngs=rngs))
                channels = mult * width
            setattr(self, f"pool{b}", MaxPool(2))
        side = image_size // 32
        self.fc1 = Dense(side * side * channels, 8 * width, rngs=rngs)
        self.logits = Dense(8 * width, num_classes, relu=False, rngs=rngs)
