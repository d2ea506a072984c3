"""Model zoo (Flax NNX), adapters for your own models, feature functions."""

from jax_infodiscard.models.adapters import from_apply, from_linen, from_nnx
from jax_infodiscard.models.base import LayeredModel
from jax_infodiscard.models.convnets import VGG, AlexNet, ConvNet
from jax_infodiscard.models.functional import (
    feature_fn,
    layer_names,
    model_fn,
    split_fn,
)
from jax_infodiscard.models.registry import (
    available_models,
    create_model,
    model_metadata,
)
from jax_infodiscard.models.resnet import ResNet, ResNetAutoEncoder
from jax_infodiscard.models.unet import UNet

__all__ = [
    "VGG",
    "AlexNet",
    "ConvNet",
    "LayeredModel",
    "ResNet",
    "ResNetAutoEncoder",
    "UNet",
    "available_models",
    "create_model",
    "feature_fn",
    "from_apply",
    "from_linen",
    "from_nnx",
    "layer_names",
    "model_fn",
    "model_metadata",
    "split_fn",
]
