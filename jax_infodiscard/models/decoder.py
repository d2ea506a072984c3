"""Residual decoder ``g_l`` that maps a layer's feature back to image space.

The reconstruction-uncertainty metric (RU, paper sec. 3.2 and docs/design.md,
"Definitions") needs, for every layer ``l``, a decoder trained with MSE to map
``h_l(x')`` back to ``x'``. Following the paper, the decoder is a stack of
residual blocks (six by default, eight for the paper's App. J check); the
first blocks carry stride-2 transposed convolutions on *both* tracks of the
block (main and shortcut) to undo the layer's downsampling.

Architecture, for one feature of shape ``feature_shape`` and an image of shape
``(H, W, C)``:

* **Input normalisation.** Features are centred and scaled per channel with
  fixed statistics held in :class:`FeatureStat` variables (initialised to the
  identity; :func:`jax_infodiscard.training.decoder.train_decoder` sets them
  from the training features). They are not trained by the optimizer but are
  saved with the parameters, so the decoder is insensitive to the arbitrary
  scale of a layer's activations. Likewise the output is de-normalised with
  the per-channel mean and standard deviation of the training images, so
  training starts from the right colour range instead of spending its first
  hundreds of steps learning it.
* **Spatial features** ``(h, w, c)``: a 3x3 convolution to ``width``
  channels. **Vector features** ``(d,)`` (fully-connected layers, logits): a
  dense layer to a small spatial map ``(H / 2**k, W / 2**k, width)``, see
  :func:`vector_seed_shape`.
* ``num_blocks`` pre-activation residual blocks ``s(x) + conv(relu(conv(relu
  x)))``. The first :func:`num_upsampling_blocks` of them double the spatial
  size: their first main-track convolution is a 4x4 transposed convolution
  with stride 2 and their shortcut a 2x2 transposed convolution with stride 2
  (both in sub-pixel form, :class:`SubpixelConvTranspose`, which XLA:CPU runs
  several times faster); the other blocks keep the size and use the identity
  shortcut. The second
  convolution of every block starts at zero, so each block starts as its
  shortcut (the decoder starts as a plain upsampling network).
* **Non-power-of-two ratios** (e.g. a 7x7 feature of a 32x32 image): the
  upsampling blocks bring the map to the smallest power-of-two multiple of the
  feature size that covers the image (7 -> 14 -> 28 -> 56) and a bilinear
  resize (:func:`jax.image.resize`) brings it to ``(H, W)``; power-of-two
  ratios never resize.
* A ReLU, a 3x3 convolution to ``C`` channels and the output
  de-normalisation ``out * image_scale + image_mean``. The output is
  **linear** (no sigmoid): the decoder reconstructs ``x' = x + noise``, which
  leaves the unit range slightly, and a linear head keeps the MSE gradient
  alive at the range's edges.
* **Linear readout** (``readout_kernel > 0``, the default of
  :class:`~jax_infodiscard.training.decoder.DecoderConfig`): a linear map of
  the normalised feature plus a per-pixel intercept is added to the output,
  and ``image_mean`` is not: ``out * image_scale + readout(f) + readout_bias``.
  Its weights are :class:`Readout` variables, solved in closed form (ridge
  regression, :mod:`jax_infodiscard.training.ridge`) before training and not
  trained by the optimizer; the head starts at zero, so the decoder starts as
  the ridge solution and the residual network learns what the linear map
  misses. For a spatial feature at an integer stride ``s`` (``H = s h``,
  ``W = s w``) the readout maps each ``k x k`` neighbourhood of feature
  positions to the ``s x s`` block of pixels under its centre
  (:func:`readout_inputs`, :func:`depth_to_space`); for a vector feature it
  is a dense map to every pixel. Features at a non-integer stride, or whose
  readout would be too large (:func:`readout_geometry`), get no readout.
* **Dense readout** (``dense_readout=True`` with a readout, the default of
  :class:`~jax_infodiscard.training.decoder.DecoderConfig`): for a spatial
  feature, a second fixed linear map from the whole normalised feature
  ``(h w c,)`` to the whole image ``(H W C,)`` is added to the local readout
  (solved in closed form on what the local readout misses): the local map
  reads the neighbourhood, the dense one what a pixel owes to the rest of the
  feature. Skipped when it would hold more than 2**26 weights
  (:func:`dense_readout_shape`).

No normalisation layer depends on the batch, so the reconstruction of one
image never depends on the other images of its batch.

Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> dec = create_decoder((8, 8, 16), (32, 32, 3), width=8, key=jax.random.key(0))
    >>> dec.num_upsampling
    2
    >>> g = decoder_fn(dec, allow_untrained=True)  # a pytree: jit-friendly
    >>> jax.jit(lambda g, f: g(f))(g, jnp.zeros((5, 8, 8, 16))).shape
    (5, 32, 32, 3)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx
from jax.tree_util import Partial

from jax_infodiscard.types import Array

__all__ = [
    "Decoder",
    "FeatureStat",
    "Readout",
    "SubpixelConvTranspose",
    "create_decoder",
    "decoder_fn",
    "dense_readout_shape",
    "depth_to_space",
    "num_upsampling_blocks",
    "readout_geometry",
    "readout_inputs",
    "space_to_depth",
    "vector_seed_shape",
]

_MIN_SEED_SIZE = 4
# Untruncated normal initialisers: as good as the truncated defaults here and
# much cheaper to compile on a CPU (no erfinv).
_HE = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")
_LECUN = nnx.initializers.variance_scaling(1.0, "fan_in", "normal")
_MAX_VECTOR_UPSAMPLING = 3


_MAX_READOUT_INPUTS = 4608  # k*k*c of a local readout (3 x 3 x 512)
_MAX_DENSE_READOUT = 2**24  # d * H * W * C weights of a dense readout
_MAX_SPATIAL_DENSE = 2**26  # h * w * c * H * W * C weights of a dense readout


class FeatureStat(nnx.Variable):
    """Fixed (non-trained) feature normalisation statistic of a decoder."""


class Readout(nnx.Variable):
    """Closed-form (ridge) linear readout weights of a decoder: not trained by
    the optimizer, saved with the parameters."""


def _as_shape(shape: Sequence[int], name: str) -> tuple[int, ...]:
    try:
        out = tuple(int(s) for s in shape)
    except TypeError as err:
        raise ValueError(f"{name} must be a tuple of ints, got {shape!r}") from err
    if any(s <= 0 for s in out) or any(int(s) != s for s in shape):
        raise ValueError(f"{name} must hold positive integers, got {shape!r}")
    return out


def _check_image_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = _as_shape(image_shape, "image_shape")
    if len(shape) != 3:
        raise ValueError(
            f"image_shape must be (H, W, C) for one image, got {image_shape!r}"
        )
    return shape  # type: ignore[return-value]


def _check_feature_shape(feature_shape: Sequence[int]) -> tuple[int, ...]:
    shape = _as_shape(feature_shape, "feature_shape")
    if len(shape) not in (1, 3):
        raise ValueError(
            "feature_shape must be (h, w, c) for a spatial feature or (d,) for a "
            f"vector feature (one image, no batch axis), got {feature_shape!r}"
        )
    return shape


def _doublings_to_cover(size: int, target: int) -> int:
    n = 0
    while size * 2**n < target:
        n += 1
    return n


def vector_seed_shape(
    image_shape: Sequence[int], num_blocks: int = 6
) -> tuple[int, int]:
    """Spatial size ``(h0, w0)`` of the map that a vector feature is projected to.

    ``h0, w0 = H / 2**k, W / 2**k`` with ``k`` the largest integer such that
    ``k <= min(3, num_blocks)``, ``2**k`` divides both ``H`` and ``W`` and the
    map is at least 4x4 (for 32x32 images: 4x4, ``k = 3``; for 28x28: 7x7,
    ``k = 2``; for images with an odd side: the full size, ``k = 0``). The
    ``k`` upsampling blocks then restore ``(H, W)`` exactly.

    Args:
        image_shape: ``(H, W, C)`` of one image.
        num_blocks: number of residual blocks of the decoder.

    Returns:
        ``(h0, w0)`` as ints.
    """
    height, width, _ = _check_image_shape(image_shape)
    k = 0
    while (
        k < min(_MAX_VECTOR_UPSAMPLING, num_blocks)
        and height % 2 ** (k + 1) == 0
        and width % 2 ** (k + 1) == 0
        and min(height, width) // 2 ** (k + 1) >= _MIN_SEED_SIZE
    ):
        k += 1
    return height // 2**k, width // 2**k


def num_upsampling_blocks(
    feature_shape: Sequence[int], image_shape: Sequence[int], num_blocks: int = 6
) -> int:
    """Number of stride-2 upsampling blocks a decoder needs.

    For a spatial feature ``(h, w, c)`` this is the smallest ``n`` with
    ``h * 2**n >= H`` and ``w * 2**n >= W`` (``log2(H / h)`` for power-of-two
    ratios; a feature at stride 1 needs 0, stride 8 needs 3). For a vector
    feature it is ``log2(H / h0)`` with ``h0`` from :func:`vector_seed_shape`.

    Args:
        feature_shape: ``(h, w, c)`` or ``(d,)`` of one image's feature.
        image_shape: ``(H, W, C)`` of one image.
        num_blocks: number of residual blocks available.

    Returns:
        The number of upsampling blocks (int, ``0 <= n <= num_blocks``).

    Raises:
        ValueError: bad shapes, or a feature so downsampled that more than
            ``num_blocks`` upsampling blocks would be needed.
    """
    feature_shape = _check_feature_shape(feature_shape)
    height, width, _ = _check_image_shape(image_shape)
    if int(num_blocks) != num_blocks or num_blocks < 1:
        raise ValueError(f"num_blocks must be a positive integer, got {num_blocks!r}")
    if len(feature_shape) == 1:
        h0, _ = vector_seed_shape(image_shape, num_blocks)
        return _doublings_to_cover(h0, height)
    h, w, _ = feature_shape
    n = max(_doublings_to_cover(h, height), _doublings_to_cover(w, width))
    if n > num_blocks:
        raise ValueError(
            f"a feature of spatial size {h}x{w} needs {n} stride-2 upsampling "
            f"blocks to reach the {height}x{width} image, but the decoder has only "
            f"num_blocks={num_blocks}; use num_blocks >= {n}"
        )
    return n


def depth_to_space(x: Array, factor: int = 2) -> Array:
    """``(B, h, w, s * s * c) -> (B, s h, s w, c)`` with ``s = factor``.

    Channel ``(s a + b) * c + o`` of input pixel ``(i, j)`` becomes channel
    ``o`` of output pixel ``(s i + a, s j + b)``.
    """
    batch, h, w, cs = x.shape
    if cs % (factor * factor):
        raise ValueError(
            f"depth_to_space needs channels divisible by {factor * factor}, got {cs}"
        )
    c = cs // (factor * factor)
    x = x.reshape(batch, h, w, factor, factor, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, factor * h, factor * w, c)


def space_to_depth(x: Array, factor: int) -> Array:
    """``(B, s h, s w, c) -> (B, h, w, s * s * c)``: the inverse of
    :func:`depth_to_space`.

    >>> x = jnp.arange(2 * 6 * 6 * 3.0).reshape(2, 6, 6, 3)
    >>> bool(jnp.all(depth_to_space(space_to_depth(x, 3), 3) == x))
    True
    """
    batch, hs, ws, c = x.shape
    if hs % factor or ws % factor:
        raise ValueError(
            f"space_to_depth needs sides divisible by {factor}, got {hs}x{ws}"
        )
    h, w = hs // factor, ws // factor
    x = x.reshape(batch, h, factor, w, factor, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, h, w, factor * factor * c)


def readout_geometry(
    feature_shape: Sequence[int], image_shape: Sequence[int], kernel: int
) -> tuple[int, int] | None:
    """``(inputs, outputs)`` of the linear readout of a decoder, or ``None``.

    * Vector feature ``(d,)``: a dense map, ``(d, H * W * C)``; ``None`` when
      it would hold more than 2**24 weights.
    * Spatial feature ``(h, w, c)`` with ``H = s h`` and ``W = s w`` for one
      integer ``s``: each ``k x k`` neighbourhood of feature positions
      (``k = kernel``, zero-padded at the border) maps to the ``s x s x C``
      block of pixels under its centre, ``(k * k * c, s * s * C)``; ``k``
      drops to 1 when ``k * k * c`` exceeds 4,608. ``None`` for non-integer
      or unequal strides.
    * ``kernel == 0``: ``None`` (no readout).

    >>> readout_geometry((8, 8, 64), (32, 32, 3), 3)
    (576, 48)
    >>> readout_geometry((10,), (32, 32, 3), 3)
    (10, 3072)
    >>> readout_geometry((7, 7, 8), (32, 32, 3), 3) is None
    True
    """
    feature_shape = _check_feature_shape(feature_shape)
    height, width, channels = _check_image_shape(image_shape)
    if int(kernel) != kernel or kernel < 0 or (kernel and kernel % 2 == 0):
        raise ValueError(
            f"readout_kernel must be 0 or odd and positive, got {kernel!r}"
        )
    if kernel == 0:
        return None
    if len(feature_shape) == 1:
        outputs = height * width * channels
        if feature_shape[0] * outputs > _MAX_DENSE_READOUT:
            return None
        return feature_shape[0], outputs
    h, w, c = feature_shape
    if height % h or width % w or height // h != width // w:
        return None
    stride = height // h
    k = kernel if kernel * kernel * c <= _MAX_READOUT_INPUTS else 1
    return k * k * c, stride * stride * channels


def dense_readout_shape(
    feature_shape: Sequence[int], image_shape: Sequence[int]
) -> tuple[int, int] | None:
    """``(h * w * c, H * W * C)`` of the dense readout of a spatial feature,
    or ``None``: for a vector feature (whose readout is dense already) and
    when it would hold more than 2**26 weights.

    >>> dense_readout_shape((16, 16, 32), (32, 32, 3))
    (8192, 3072)
    >>> dense_readout_shape((10,), (32, 32, 3)) is None
    True
    """
    feature_shape = _check_feature_shape(feature_shape)
    height, width, channels = _check_image_shape(image_shape)
    if len(feature_shape) == 1:
        return None
    inputs, outputs = math.prod(feature_shape), height * width * channels
    if inputs * outputs > _MAX_SPATIAL_DENSE:
        return None
    return inputs, outputs


def readout_inputs(features: Array, inputs: int) -> Array:
    """The inputs of a linear readout with ``inputs`` rows (from
    :func:`readout_geometry`): ``(B, d)`` unchanged, or ``(B, h, w, k * k *
    c)`` the zero-padded ``k x k`` neighbourhoods of a spatial feature
    ``(B, h, w, c)``, ordered (row offset, column offset, channel).

    >>> f = jnp.arange(2 * 3 * 3 * 2.0).reshape(2, 3, 3, 2)
    >>> p = readout_inputs(f, 18)
    >>> p.shape, bool(jnp.all(p[:, :, :, 8:10] == f))  # the centre
    ((2, 3, 3, 18), True)
    """
    if features.ndim == 2:
        return features
    c = features.shape[-1]
    k = math.isqrt(inputs // c)
    if k * k * c != inputs:
        raise ValueError(f"{inputs} readout inputs do not fit {c} channels")
    if k == 1:
        return features
    _, h, w, _ = features.shape
    p = k // 2
    padded = jnp.pad(features, ((0, 0), (p, p), (p, p), (0, 0)))
    return jnp.concatenate(
        [padded[:, i : i + h, j : j + w, :] for i in range(k) for j in range(k)],
        axis=-1,
    )


class SubpixelConvTranspose(nnx.Module):
    """Stride-2 transposed convolution in its sub-pixel form.

    A stride-2 transposed convolution with a ``2k x 2k`` kernel computes each
    of the four output phases ``(2i + a, 2j + b)`` as an ordinary ``k x k``
    convolution of the input; this module computes the four phases with one
    convolution to ``4 * out_features`` channels followed by
    :func:`depth_to_space`. ``kernel_size=1`` is exactly a 2x2 stride-2
    transposed convolution, ``kernel_size=2`` a 4x4 one (up to the alignment
    of the zero padding at the border). Under XLA:CPU this runs faster
    than ``nnx.ConvTranspose`` (which dilates the input with zeros).

    Args:
        in_features: input channels.
        out_features: output channels.
        kernel_size: ``k`` (the equivalent transposed kernel is ``2k``).
        kernel_init: initializer of the ``(k, k, in, 4 out)`` kernel.
        rngs: parameter keys.

    Call:
        ``(B, h, w, in) -> (B, 2 h, 2 w, out)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int,
        *,
        kernel_init: nnx.Initializer,
        rngs: nnx.Rngs,
    ):
        self.conv = nnx.Conv(
            in_features,
            4 * out_features,
            (kernel_size, kernel_size),
            kernel_init=kernel_init,
            rngs=rngs,
        )

    def __call__(self, x: Array) -> Array:
        return depth_to_space(self.conv(x))


class _ResidualBlock(nnx.Module):
    """Pre-activation residual block; optionally doubles the spatial size."""

    def __init__(self, width: int, *, upsample: bool, rngs: nnx.Rngs):
        if upsample:
            self.conv1 = SubpixelConvTranspose(
                width, width, 2, kernel_init=_HE, rngs=rngs
            )
            self.shortcut = SubpixelConvTranspose(
                width, width, 1, kernel_init=_LECUN, rngs=rngs
            )
        else:
            self.conv1 = nnx.Conv(width, width, (3, 3), kernel_init=_HE, rngs=rngs)
            self.shortcut = None
        self.conv2 = nnx.Conv(
            width, width, (3, 3), kernel_init=nnx.initializers.zeros, rngs=rngs
        )

    def __call__(self, x: Array) -> Array:
        y = self.conv2(nnx.relu(self.conv1(nnx.relu(x))))
        return y + (x if self.shortcut is None else self.shortcut(x))


class Decoder(nnx.Module):
    """Residual decoder from one layer's feature to image space.

    See the module docstring for the architecture.

    Args:
        feature_shape: ``(h, w, c)`` (spatial, NHWC without batch) or ``(d,)``
            (vector) shape of one image's feature.
        image_shape: ``(H, W, C)`` of one image.
        num_blocks: number of residual blocks (paper: 6; App. J also uses 8).
        width: channels of every residual block. 32 keeps training fast on a
            CPU; 64 gives a somewhat lower reconstruction error.
        readout_kernel: ``k`` of the linear readout (see
            :func:`readout_geometry`; odd); 0 builds no readout (the
            architecture of earlier releases).
        dense_readout: add a dense readout to the local one of a spatial
            feature (:func:`dense_readout_shape`; only with a readout).
        rngs: ``nnx.Rngs`` used for parameter initialisation.

    Attributes:
        trained_steps: optimiser steps the decoder was trained for (a static
            int; 0 for a new decoder). Set by
            :func:`jax_infodiscard.training.decoder.train_decoder` and restored
            from the checkpoint metadata; :func:`decoder_fn` rejects 0.

    Raises:
        ValueError: bad shapes, non-positive sizes, or more downsampling than
            ``num_blocks`` upsampling blocks can undo.

    Call:
        ``decoder(features)`` with ``features`` of shape
        ``(B, *feature_shape)`` returns ``(B, H, W, C)`` float32 images
        (unbounded; trained to approximate unit-range images).
    """

    def __init__(
        self,
        feature_shape: Sequence[int],
        image_shape: Sequence[int],
        *,
        num_blocks: int = 6,
        width: int = 32,
        readout_kernel: int = 0,
        dense_readout: bool = False,
        rngs: nnx.Rngs,
    ):
        self.feature_shape = _check_feature_shape(feature_shape)
        self.image_shape = _check_image_shape(image_shape)
        if int(width) != width or width < 1:
            raise ValueError(f"width must be a positive integer, got {width!r}")
        self.num_blocks = int(num_blocks)
        self.width = int(width)
        self.trained_steps = 0  # set by training and by checkpoint loading
        self.num_upsampling = num_upsampling_blocks(
            self.feature_shape, self.image_shape, self.num_blocks
        )
        channels = self.feature_shape[-1]
        self.feature_mean = FeatureStat(jnp.zeros((channels,), jnp.float32))
        self.feature_scale = FeatureStat(jnp.ones((channels,), jnp.float32))
        out_channels = self.image_shape[-1]
        self.image_mean = FeatureStat(jnp.zeros((out_channels,), jnp.float32))
        self.image_scale = FeatureStat(jnp.ones((out_channels,), jnp.float32))
        if len(self.feature_shape) == 1:
            self.seed_shape = vector_seed_shape(self.image_shape, self.num_blocks)
            h0, w0 = self.seed_shape
            self.project = nnx.Linear(
                channels, h0 * w0 * self.width, kernel_init=_LECUN, rngs=rngs
            )
            self.stem = None
        else:
            self.seed_shape = self.feature_shape[:2]
            self.project = None
            self.stem = nnx.Conv(
                channels, self.width, (3, 3), kernel_init=_LECUN, rngs=rngs
            )
        self.blocks = nnx.List(
            [
                _ResidualBlock(self.width, upsample=i < self.num_upsampling, rngs=rngs)
                for i in range(self.num_blocks)
            ]
        )
        self.readout_kernel = int(readout_kernel)
        geometry = readout_geometry(
            self.feature_shape, self.image_shape, self.readout_kernel
        )
        self.readout_shape = geometry
        self.dense_shape = (
            dense_readout_shape(self.feature_shape, self.image_shape)
            if dense_readout and geometry is not None
            else None
        )
        self.dense = (
            None
            if self.dense_shape is None
            else Readout(jnp.zeros(self.dense_shape, jnp.float32))
        )
        if geometry is None:
            self.readout = None
            self.readout_bias = None
        else:
            # Solved in closed form before training; the head starts at zero
            # so that the decoder starts as the readout.
            self.readout = Readout(jnp.zeros(geometry, jnp.float32))
            self.readout_bias = FeatureStat(jnp.zeros(self.image_shape, jnp.float32))
        self.head = nnx.Conv(
            self.width,
            self.image_shape[-1],
            (3, 3),
            kernel_init=_HE if geometry is None else nnx.initializers.zeros,
            rngs=rngs,
        )

    def __call__(self, features: Array) -> Array:
        features = jnp.asarray(features)
        if features.ndim != len(self.feature_shape) + 1 or tuple(
            features.shape[1:]
        ) != tuple(self.feature_shape):
            raise ValueError(
                f"decoder expects features of shape (B, {', '.join(map(str, self.feature_shape))}),"  # noqa: E501
                f" got {tuple(features.shape)}"
            )
        x = normalised = self.normalise(features)
        if self.project is not None:
            h0, w0 = self.seed_shape
            x = self.project(x).reshape(x.shape[0], h0, w0, self.width)
        else:
            x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        height, width, _ = self.image_shape
        if x.shape[1:3] != (height, width):
            x = jax.image.resize(
                x, (x.shape[0], height, width, x.shape[3]), method="bilinear"
            )
        out = self.head(nnx.relu(x)) * self.image_scale[...]
        if self.readout is None:
            return out + self.image_mean[...]
        return out + self.linear_readout(normalised) + self.readout_bias[...]

    def linear_readout(self, normalised: Array) -> Array:
        """The readout's linear part (without its intercept) of normalised
        features ``(B, *feature_shape)``: ``(B, H, W, C)``."""
        inputs = readout_inputs(normalised, self.readout_shape[0])
        out = inputs @ self.readout[...]
        if out.ndim == 2:
            return out.reshape(out.shape[0], *self.image_shape)
        out = depth_to_space(out, self.image_shape[0] // self.feature_shape[0])
        if self.dense is None:
            return out
        flat = normalised.reshape(normalised.shape[0], -1)
        return out + (flat @ self.dense[...]).reshape(out.shape)

    def normalise(self, features: Array) -> Array:
        """Features ``(B, *feature_shape)`` centred and scaled per channel."""
        return (jnp.asarray(features, jnp.float32) - self.feature_mean[...]) / (
            self.feature_scale[...]
        )


@partial(
    jax.jit,
    static_argnames=(
        "feature_shape",
        "image_shape",
        "num_blocks",
        "width",
        "readout_kernel",
        "dense_readout",
    ),
)
def _init_state(
    key: Array,
    *,
    feature_shape: tuple[int, ...],
    image_shape: tuple[int, int, int],
    num_blocks: int,
    width: int,
    readout_kernel: int = 0,
    dense_readout: bool = False,
) -> nnx.State:
    # XLA's RngBitGenerator compiles several times faster on a CPU than the
    # default threefry for the dozens of initializer draws of a decoder.
    seed = jax.random.bits(key, (), jnp.uint32)
    decoder = Decoder(
        feature_shape,
        image_shape,
        num_blocks=num_blocks,
        width=width,
        readout_kernel=readout_kernel,
        dense_readout=dense_readout,
        rngs=nnx.Rngs(params=jax.random.key(seed, impl="rbg")),
    )
    return nnx.state(decoder)


def create_decoder(
    feature_shape: Sequence[int],
    image_shape: Sequence[int],
    *,
    num_blocks: int = 6,
    width: int = 32,
    readout_kernel: int = 0,
    dense_readout: bool = False,
    key: Array,
) -> Decoder:
    """Builds a :class:`Decoder` with one compiled initialisation.

    Same architecture and initialisers as ``Decoder(..., rngs=...)``, but the
    parameters are drawn inside a single jitted program, from an ``rbg`` key
    derived from ``key`` (XLA's RngBitGenerator: deterministic for a given
    backend): constructing a module eagerly compiles every initializer call
    separately, and threefry draws compile slowly, which together cost
    several seconds on a CPU.

    Args:
        feature_shape: ``(h, w, c)`` or ``(d,)`` of one image's feature.
        image_shape: ``(H, W, C)`` of one image.
        num_blocks: number of residual blocks.
        width: channels of the residual blocks.
        readout_kernel: ``k`` of the linear readout (0: none); its weights
            start at zero.
        dense_readout: add the dense readout (see :class:`Decoder`).
        key: PRNG key of the initialisation.

    Returns:
        The initialised decoder.

    Raises:
        ValueError: as :class:`Decoder`.
    """
    feature_shape = _check_feature_shape(feature_shape)
    image_shape = _check_image_shape(image_shape)
    num_upsampling_blocks(feature_shape, image_shape, num_blocks)
    kwargs = dict(
        feature_shape=feature_shape,
        image_shape=image_shape,
        num_blocks=int(num_blocks),
        width=int(width),
        readout_kernel=int(readout_kernel),
        dense_readout=bool(dense_readout),
    )
    abstract = nnx.eval_shape(
        lambda: Decoder(
            feature_shape,
            image_shape,
            num_blocks=kwargs["num_blocks"],
            width=kwargs["width"],
            readout_kernel=kwargs["readout_kernel"],
            dense_readout=kwargs["dense_readout"],
            rngs=nnx.Rngs(0),
        )
    )
    graphdef, _ = nnx.split(abstract)
    return nnx.merge(graphdef, _init_state(key, **kwargs))


@dataclasses.dataclass(frozen=True)
class _ApplyDecoder:
    """Hashable callable ``(state, features) -> images`` for one architecture.

    Two decoders with the same architecture have equal graph definitions, so
    compiled programs that take their :func:`decoder_fn` as an argument are
    reused (no recompilation per decoder).
    """

    graphdef: nnx.GraphDef

    def __call__(self, state: nnx.State, features: Array) -> Array:
        return nnx.merge(self.graphdef, state)(features)


def decoder_fn(decoder: Decoder, *, allow_untrained: bool = False) -> Partial:
    """Pure function ``g(features) -> images`` of a decoder.

    The decoder's variables are bound as the pytree arguments of a
    :class:`jax.tree_util.Partial` (via ``nnx.split``), so the returned
    function can be passed to jitted programs as a traced argument, like the
    model zoo's feature functions.

    Args:
        decoder: a :class:`Decoder`.
        allow_untrained: accept a decoder with ``trained_steps == 0`` (for
            shape checks and tests; RU with such a decoder is meaningless).

    Returns:
        ``g`` mapping features ``(B, *decoder.feature_shape)`` to float32
        images ``(B, H, W, C)``. ``g`` raises ``ValueError`` (at trace time)
        for features of another shape.

    Raises:
        ValueError: ``decoder`` is not a :class:`Decoder`, is untrained (and
            ``allow_untrained`` is false), or its output shape does not match
            its ``image_shape`` (an inconsistent module).
    """
    if not isinstance(decoder, Decoder):
        raise ValueError(f"decoder must be a Decoder, got {type(decoder).__name__}")
    if not allow_untrained and decoder.trained_steps <= 0:
        raise ValueError(
            "the decoder is untrained (0 steps), so RU computed with it would "
            "be meaningless; train it with jax_infodiscard.training.decoder."
            "train_decoder (or load a trained one with load_decoder), or pass "
            "allow_untrained=True"
        )
    graphdef, state = nnx.split(decoder)
    fn = Partial(_ApplyDecoder(graphdef), state)
    spec = jax.ShapeDtypeStruct((1, *decoder.feature_shape), jnp.float32)
    out = jax.eval_shape(lambda g, f: g(f), fn, spec)  # also for abstract modules
    if tuple(out.shape[1:]) != tuple(decoder.image_shape):
        raise ValueError(
            f"decoder output shape {tuple(out.shape[1:])} does not match the image "
            f"shape {tuple(decoder.image_shape)}"
        )
    return fn
