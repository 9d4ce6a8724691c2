"""Classifier backbones, convolutionalized, each declaring its feature taps."""

from .base import GEOMETRIES, Backbone, FeatureTap
from .vgg import VGG16

__all__ = ["Backbone", "FeatureTap", "GEOMETRIES", "BACKBONES", "VGG16"]

# name -> builder(*, geometry, in_channels, classifier): the registry's backbones.
BACKBONES = {
    "vgg16": VGG16,
}
