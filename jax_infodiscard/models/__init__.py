"""Model zoo (Flax NNX) and pure feature functions of its models."""

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
    "layer_names",
    "model_fn",
    "model_metadata",
    "split_fn",
]
