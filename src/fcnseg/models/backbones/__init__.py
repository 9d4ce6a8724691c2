"""Classifier backbones, convolutionalized, each declaring its feature taps."""

from .alexnet import AlexNet
from .base import GEOMETRIES, Backbone, FeatureTap, set_activation_checkpointing
from .efficientnet import (
    EfficientNetLite,
    efficientnet_lite0,
    efficientnet_lite1,
    efficientnet_lite2,
)
from .googlenet import GoogLeNet
from .resnet import ResNet, resnet18, resnet34, resnet50, resnet101
from .vgg import VGG16

__all__ = [
    "BACKBONES",
    "GEOMETRIES",
    "AlexNet",
    "Backbone",
    "EfficientNetLite",
    "FeatureTap",
    "GoogLeNet",
    "ResNet",
    "VGG16",
    "set_activation_checkpointing",
]

# name -> builder(*, geometry, in_channels, classifier): the registry's backbones.
BACKBONES = {
    "vgg16": VGG16,
    "alexnet": AlexNet,
    "googlenet": GoogLeNet,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet101": resnet101,
    "efficientnet_lite0": efficientnet_lite0,
    "efficientnet_lite1": efficientnet_lite1,
    "efficientnet_lite2": efficientnet_lite2,
}
