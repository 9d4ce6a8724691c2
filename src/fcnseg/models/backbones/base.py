"""What every backbone offers an FCN head: named feature taps with their geometry."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..geometry import CoordMap, trace
from ..normalization import Normalization

__all__ = [
    "FeatureTap",
    "Backbone",
    "SequentialBackbone",
    "GEOMETRIES",
    "check_geometry",
    "set_activation_checkpointing",
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
    and implement ``forward`` and ``coord_map``, running their blocks through
    ``run_block`` so that ``checkpointing`` applies to them.

    ``checkpointing = True`` trades compute for memory in training: each block keeps only
    its input and recomputes its activations in the backward pass (gradients unchanged;
    benchmarks/speed.py measures the cost and the memory saved).
    """

    taps: tuple[FeatureTap, ...]
    normalization: Normalization
    classifier_name: str
    geometry: str
    checkpointing: bool = False

    def run_block(self, block: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor):
        """``block(x)``; when checkpointing a training pass, its activations are not kept
        but recomputed in the backward pass (batch-norm statistics are updated once)."""
        if not (self.checkpointing and self.training and torch.is_grad_enabled()):
            return block(x)
        return checkpoint(block, x, use_reentrant=False, context_fn=self._recompute_context)

    def _recompute_context(self):
        return nullcontext(), _running_stats_frozen(self)

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
        for last, modules in self._runs():
            x = self.run_block(partial(_in_turn, modules), x)
            if last in inner:
                features[last] = x
        features[self.taps[-1].name] = x
        return features

    def _runs(self) -> Iterator[tuple[str, list[nn.Module]]]:
        """The trunk in runs that end at an inner tap or a pooling layer, each with the name
        of its last layer: the blocks that ``run_block`` checkpoints (VGG16: its five
        stages and fc6-fc7). A run never starts with an in-place layer: that would
        overwrite the input the checkpoint keeps."""
        trunk = self._trunk()
        inner = {tap.name for tap in self.taps[:-1]}
        modules: list[nn.Module] = []
        for index, (name, module) in enumerate(trunk):
            modules.append(module)
            following = trunk[index + 1][1] if index + 1 < len(trunk) else None
            pooled = isinstance(module, (nn.MaxPool2d, nn.AvgPool2d))
            if name in inner or (pooled and not getattr(following, "inplace", False)):
                yield name, modules
                modules = []
        if modules:
            yield trunk[-1][0], modules

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


def set_activation_checkpointing(model: nn.Module, enabled: bool) -> None:
    """Turn ``checkpointing`` on or off for every backbone in ``model`` (several in the
    fusion nets)."""
    for module in model.modules():
        if isinstance(module, Backbone):
            module.checkpointing = enabled


def _in_turn(modules: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for module in modules:
        x = module(x)
    return x


@contextmanager
def _running_stats_frozen(module: nn.Module):
    """Batch norms in ``module`` normalise by the batch but leave their running statistics
    alone: a checkpointed block's recomputation must not count the batch twice."""
    norms = [
        m
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for norm in norms:
        norm.momentum = 0.0
    try:
        yield
    finally:
        for norm, (momentum, tracked) in zip(norms, saved, strict=True):
            norm.momentum = momentum
            norm.num_batches_tracked.copy_(tracked)


def check_geometry(geometry: str) -> str:
    if geometry not in GEOMETRIES:
        raise ValueError(f"unknown geometry {geometry!r}: choose one of {', '.join(GEOMETRIES)}")
    return geometry
