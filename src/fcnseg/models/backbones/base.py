"""What every backbone offers an FCN head: named feature taps with their geometry."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ...surgery import TransplantReport
from ..geometry import CoordMap, trace
from ..normalization import Normalization

__all__ = [
    "FeatureTap",
    "Backbone",
    "SequentialBackbone",
    "GEOMETRIES",
    "check_geometry",
]

# caffe: pad 100 on the first convolution, as the reference nets (output covers any input);
# aligned: ordinary padding, every stride-s tap has ceil(H / s) cells over the image.
GEOMETRIES = ("caffe", "aligned")


@dataclass(frozen=True)
class FeatureTap:
    """A feature map the backbone exposes: its name, output stride and channel count."""

    name: str
    stride: int
    channels: int


class Backbone(nn.Module):
    """A convolutionalized classifier that returns its feature taps by name.

    Subclasses set ``taps`` (ordered by increasing stride; the last one is the stride-32
    feature map the classifier, and an FCN's ``score_fr``, reads), ``normalization``
    (the input convention of the weights), ``classifier_name`` (the attribute holding
    the ImageNet classifier as a 1x1 convolution when built with ``classifier=True``)
    and implement ``forward`` and ``coord_map``.
    """

    taps: tuple[FeatureTap, ...]
    normalization: Normalization
    classifier_name: str
    geometry: str

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def coord_map(self, tap: str) -> CoordMap:
        """Where the cells of feature tap ``tap`` sit on the input image."""
        raise NotImplementedError

    def tap(self, stride: int) -> FeatureTap:
        """The tap at the given output stride."""
        for candidate in self.taps:
            if candidate.stride == stride:
                return candidate
        offered = ", ".join(f"{t.name} (stride {t.stride})" for t in self.taps)
        raise ValueError(
            f"{type(self).__name__} has no tap at stride {stride}; it offers {offered}"
        )

    def init_weights(self) -> None:
        """He normal (fan out) convolutions and unit batch norm, classifier excepted.

        torchvision's ResNet initialisation, and TF's variance scaling for EfficientNet.
        """
        for name, module in self.named_modules():
            if isinstance(module, nn.Conv2d) and name != self.classifier_name:
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def output_stride(self) -> int:
        return self.taps[-1].stride

    @property
    def classifier(self) -> nn.Module | None:
        return getattr(self, self.classifier_name, None)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet scores at every stride-32 cell (N x 1000 x h x w): the paper's heatmap."""
        if self.classifier is None:
            raise RuntimeError(
                f"{type(self).__name__} was built without its classifier: pass classifier=True"
            )
        return self.classifier(self(x)[self.taps[-1].name])

    def load_torchvision(self, source: str | Path | Mapping[str, torch.Tensor]) -> TransplantReport:
        """Load a torchvision state dict (a file or a mapping) into this backbone.

        ``fcnseg.weights.load_backbone_weights`` with ``source="torchvision"``: keys are
        mapped by layout, fully connected weights reshaped into the convolutionalized
        layers, the ImageNet classifier dropped when the backbone has none, every tensor
        checked before anything is written, and the normalisation set to the weights'.
        """
        from ...weights.foreign import load_backbone_weights  # weights builds on models

        return load_backbone_weights(self, source, source="torchvision")


class SequentialBackbone(Backbone):
    """A backbone whose children run one after another (VGG16, AlexNet, GoogLeNet).

    A tap is the output of the child of the same name; the last tap is the trunk's output
    (after fc7's ReLU and dropout). The classifier child is not part of the trunk.
    """

    def _trunk(self) -> list[tuple[str, nn.Module]]:
        return [(n, m) for n, m in self.named_children() if n != self.classifier_name]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        inner = {tap.name for tap in self.taps[:-1]}
        features: dict[str, torch.Tensor] = {}
        for name, module in self._trunk():
            x = module(x)
            if name in inner:
                features[name] = x
        features[self.taps[-1].name] = x
        return features

    def coord_map(self, tap: str) -> CoordMap:
        names = [name for name, _ in self._trunk()]
        if tap == self.taps[-1].name:
            end = len(names)
        elif tap in {t.name for t in self.taps}:
            end = names.index(tap) + 1
        else:
            offered = ", ".join(t.name for t in self.taps)
            raise ValueError(f"{type(self).__name__} has no tap {tap!r}; it offers {offered}")
        return trace(module for _, module in self._trunk()[:end])


def check_geometry(geometry: str) -> str:
    if geometry not in GEOMETRIES:
        raise ValueError(f"unknown geometry {geometry!r}: choose one of {', '.join(GEOMETRIES)}")
    return geometry
