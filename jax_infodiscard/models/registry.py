"""Model registry: build any zoo model by name.

Names (``available_models()``):

* ``"convnet"``: tiny 3-block ConvNet (demo; trains in about a minute).
* ``"alexnet"``: AlexNet-style, 5 convolutions + 3 linear layers.
* ``"vgg11"``, ``"vgg13"``, ``"vgg16"`` (``"vgg"`` is ``"vgg11"``): VGG-style.
* ``"resnet20"``, ``"resnet32"``, ``"resnet44"``, ``"resnet56"``: CIFAR ResNets.
* ``"unet"``: small U-Net with per-pixel logits and a mean-pooled class head.
* ``"resnet20_ae"``, ``"resnet32_ae"``, ``"resnet44_ae"``: auto-encoders with
  a ResNet encoder (``__call__`` returns the reconstruction).
* any other CIFAR ResNet depth ``6n + 2``: ``"resnet8"``, ``"resnet110_ae"``...
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from jax_infodiscard.models.convnets import VGG, AlexNet, ConvNet
from jax_infodiscard.models.resnet import ResNet, ResNetAutoEncoder
from jax_infodiscard.models.surgery import apply_damage
from jax_infodiscard.models.unet import UNet
from jax_infodiscard.validation import check_int

__all__ = ["available_models", "create_model", "model_metadata"]

_BUILDERS: dict[str, Callable[..., nnx.Module]] = {
    "convnet": ConvNet,
    "alexnet": AlexNet,
    "vgg11": functools.partial(VGG, depth=11),
    "vgg13": functools.partial(VGG, depth=13),
    "vgg16": functools.partial(VGG, depth=16),
    "resnet20": functools.partial(ResNet, depth=20),
    "resnet32": functools.partial(ResNet, depth=32),
    "resnet44": functools.partial(ResNet, depth=44),
    "resnet56": functools.partial(ResNet, depth=56),
    "unet": UNet,
    "resnet20_ae": functools.partial(ResNetAutoEncoder, depth=20),
    "resnet32_ae": functools.partial(ResNetAutoEncoder, depth=32),
    "resnet44_ae": functools.partial(ResNetAutoEncoder, depth=44),
}
_ALIASES = {"vgg": "vgg11"}


_RESNET = re.compile(r"resnet(\d+)(_ae)?")


def _lookup(name: str) -> Callable[..., nnx.Module]:
    if not isinstance(name, str):
        raise ValueError(f"model name must be a string, got {type(name).__name__}")
    key = _ALIASES.get(name.lower(), name.lower())
    if key in _BUILDERS:
        return _BUILDERS[key]
    match = _RESNET.fullmatch(key)
    if match and int(match.group(1)) >= 8 and (int(match.group(1)) - 2) % 6 == 0:
        cls = ResNetAutoEncoder if match.group(2) else ResNet
        return functools.partial(cls, depth=int(match.group(1)))
    raise ValueError(
        f"unknown model {name!r}; choose one of: {', '.join(available_models())} "
        "(any CIFAR ResNet depth 6n + 2 works too, e.g. 'resnet8', 'resnet110_ae')"
    )


def available_models() -> tuple[str, ...]:
    """Names accepted by :func:`create_model` (aliases included), sorted."""
    return tuple(sorted((*_BUILDERS, *_ALIASES)))


def create_model(
    name: str,
    *,
    num_classes: int = 10,
    image_size: int = 32,
    rngs: nnx.Rngs,
    **kwargs: Any,
) -> nnx.Module:
    """Builds a zoo model.

    Args:
        name: one of :func:`available_models` (case-insensitive).
        num_classes: number of output classes (ignored by auto-encoders).
        image_size: side of the square float32 ``(B, S, S, 3)`` inputs.
        rngs: parameter initialisation keys, e.g. ``nnx.Rngs(0)``. Parameters
            are drawn with ``jax.threefry_partitionable(False)`` (much faster
            to compile on CPU), so they differ from a direct class call.
        **kwargs: model options, e.g. ``width=8`` or ``normalize=False``;
            ``damage=[(layer, num_filters, kernel_size), ...]`` applies
            :func:`~jax_infodiscard.models.surgery.damage` (paper App. F.1)
            in order, with keys from ``rngs`` (this is how the metadata of a
            damaged model rebuilds it).

    Returns:
        The model (a :class:`~jax_infodiscard.models.base.LayeredModel`).

    Raises:
        ValueError: unknown name (the message lists the choices), an image
            size the architecture cannot take, or a size option
            (``num_classes``, ``image_size``, ``width``) below 1.
        TypeError: a size option that is not an integer.

    Example:
        >>> from flax import nnx
        >>> model = create_model("resnet20", rngs=nnx.Rngs(0))
        >>> model.default_layers
        ('conv1', 'stage1', 'stage2', 'stage3', 'logits')
    """
    builder = _lookup(name)
    check_int("num_classes", num_classes)
    check_int("image_size", image_size)
    if "width" in kwargs:
        check_int("width", kwargs["width"])
    damage = kwargs.pop("damage", ())
    # The partitionable threefry sampler (jax's default) takes seconds to
    # compile per parameter shape on XLA:CPU; the classic one compiles in
    # well under a second. Values differ, determinism given `rngs` does not.
    with jax.threefry_partitionable(False):
        model = builder(
            num_classes=num_classes, image_size=image_size, rngs=rngs, **kwargs
        )
    return apply_damage(model, damage, rngs=rngs) if damage else model


def model_metadata(model: nnx.Module) -> dict[str, Any]:
    """JSON-ready description that :func:`create_model` can rebuild from.

    Returns:
        ``{"model": arch, "num_classes": int, "image_size": int,
        "model_kwargs": {...}}`` (the form read by
        :func:`jax_infodiscard.training.checkpoint.restore_checkpoint`).
    """
    return {
        "model": model.arch,
        "num_classes": int(model.num_classes),
        "image_size": int(model.image_size),
        "model_kwargs": dict(model.model_kwargs),
    }
