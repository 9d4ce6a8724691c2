"""Net surgery: turning classifiers into dense predictors and moving weights between nets.

Small pure functions over modules and state dicts, after the FCN reference's
``surgery.py``: convolutionalize fully connected layers (Section 3.1), initialise
backwards convolutions to bilinear interpolation (Section 3.3), transplant parameters by
name, and resize the score layers of a trained model to another class count.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = [
    "fc_to_conv",
    "convolutionalize",
    "bilinear_kernel",
    "bilinear_init_",
    "TransplantReport",
    "WeightMismatchError",
    "transplant",
    "class_layers",
    "without_layers",
    "expand_score",
]


def fc_to_conv(linear: nn.Linear, in_channels: int, kernel_size: int) -> nn.Conv2d:
    """A k x k convolution computing ``linear`` on every C x k x k window.

    A Linear layer reading a flattened C x k x k input has weights O x (C*k*k) in the
    same (channel, row, column) order as a convolution's O x C x k x k, so the weights
    only need a reshape (Section 3.1, "convolutionalization").
    """
    expected = in_channels * kernel_size * kernel_size
    if linear.in_features != expected:
        raise ValueError(
            f"Linear layer reads {linear.in_features} features, but a {in_channels} x "
            f"{kernel_size} x {kernel_size} window has {expected}"
        )
    conv = nn.Conv2d(in_channels, linear.out_features, kernel_size, bias=linear.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.reshape(conv.weight.shape))
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    return conv.to(linear.weight.device, linear.weight.dtype)


def _spatial_size_before(modules: list[nn.Module], input_size: tuple[int, int], channels: int):
    with torch.no_grad():
        probe = torch.zeros(1, channels, *input_size)
        for module in modules:
            probe = module(probe)
    return probe.shape[1], probe.shape[2], probe.shape[3]


def convolutionalize(
    classifier: nn.Sequential, input_size: tuple[int, int], in_channels: int = 3
) -> nn.Sequential:
    """A fully convolutional copy of ``classifier`` with the same weights.

    ``classifier`` is a sequence: convolutional features, optionally a pooling to a fixed
    size (``AdaptiveAvgPool2d``, ``AdaptiveMaxPool2d``), ``Flatten``, then Linear layers
    with element-wise layers between them. The first Linear layer becomes a convolution
    whose kernel covers the whole feature map seen at ``input_size`` (the classifier's
    own input size); the later ones become 1x1 convolutions. The adaptive pooling is
    dropped: at ``input_size`` it is the identity when its output size equals the feature
    size, and a global pooling (output 1 x 1) is dropped so the classifier runs at every
    cell instead (ResNet, EfficientNet).

    On ``input_size`` the result computes the classifier's logits (as an N x O x 1 x 1
    map); on a larger input, cell (i, j) holds the classifier's output on the window at
    (i, j) times the net's stride, exactly where the features have no zero padding.
    """
    modules = list(classifier)
    flatten = [i for i, m in enumerate(modules) if isinstance(m, nn.Flatten)]
    if len(flatten) != 1:
        raise ValueError("convolutionalize needs exactly one nn.Flatten between features and head")
    features = modules[: flatten[0]]
    pools = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
    if features and isinstance(features[-1], pools):
        channels, height, width = _spatial_size_before(features[:-1], input_size, in_channels)
        pooled = _spatial_size_before(features, input_size, in_channels)[1:]
        if pooled != (height, width) and pooled != (1, 1):
            raise ValueError(
                f"the adaptive pooling resizes {height}x{width} features to {pooled}: "
                f"convolutionalize at an input size whose features are {pooled} already"
            )
        if pooled == (1, 1):
            height = width = 1  # global pooling dropped: the head runs at every cell
        features = features[:-1]
    else:
        channels, height, width = _spatial_size_before(features, input_size, in_channels)
    if height != width:
        raise ValueError(f"features at {input_size} are {height}x{width}; pick a square input")
    head: list[nn.Module] = []
    kernel = height
    for module in modules[flatten[0] + 1 :]:
        if isinstance(module, nn.Linear):
            head.append(fc_to_conv(module, channels, kernel))
            channels, kernel = module.out_features, 1
        else:
            head.append(copy.deepcopy(module))
    return nn.Sequential(*copy.deepcopy(features), *head)


def bilinear_kernel(size: int) -> torch.Tensor:
    """The size x size kernel that upsamples bilinearly by ``(size + 1) // 2``.

    The FCN reference's ``upsample_filt``: factor f = (k + 1) // 2, centre f - 1 for odd k
    and f - 1/2 for even k, weight (1 - |i - c| / f) (1 - |j - c| / f).
    """
    factor = (size + 1) // 2
    centre = factor - 1 if size % 2 == 1 else factor - 0.5
    ramp = 1 - (torch.arange(size, dtype=torch.float64) - centre).abs() / factor
    return torch.outer(ramp, ramp).float()


def bilinear_init_(deconv: nn.ConvTranspose2d) -> nn.ConvTranspose2d:
    """Initialise a transposed convolution to bilinear interpolation, channel by channel.

    Input channel c feeds only output channel c (the reference's "class diagonal"), so an
    untrained net upsamples each class score independently.
    """
    in_channels, out_per_group, kh, kw = deconv.weight.shape
    if kh != kw:
        raise ValueError(f"bilinear init needs a square kernel, got {kh}x{kw}")
    if deconv.groups not in (1, in_channels) or (
        deconv.groups == 1 and in_channels != out_per_group
    ):
        raise ValueError("bilinear init needs as many output channels as input channels")
    kernel = bilinear_kernel(kh).to(deconv.weight)
    with torch.no_grad():
        deconv.weight.zero_()
        for c in range(in_channels):
            deconv.weight[c, 0 if deconv.groups > 1 else c] = kernel
        if deconv.bias is not None:
            deconv.bias.zero_()
    return deconv


class WeightMismatchError(KeyError):
    """Weights and model disagree on which tensors exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass
class TransplantReport:
    """What ``transplant`` did with each source parameter."""

    copied: list[str] = field(default_factory=list)
    coerced: list[str] = field(default_factory=list)  # same element count, reshaped
    dropped: list[str] = field(default_factory=list)  # in the source, not in the target
    missing: list[str] = field(default_factory=list)  # in the target, not in the source

    def __str__(self) -> str:
        return (
            f"{len(self.copied)} copied, {len(self.coerced)} coerced, "
            f"{len(self.dropped)} dropped, {len(self.missing)} left as initialised"
        )


def transplant(
    dst: nn.Module, src: nn.Module | Mapping[str, torch.Tensor], *, strict: bool = False
) -> TransplantReport:
    """Copy parameters and buffers from ``src`` into ``dst`` by name.

    A tensor whose shape differs but whose element count agrees is reshaped (a Linear
    fc6 into a 7x7 convolution); any other shape mismatch raises, naming the key and both
    shapes. With ``strict``, keys missing on either side raise too. Nothing is written
    unless every check passes.
    """
    source = src.state_dict() if isinstance(src, nn.Module) else dict(src)
    target = dst.state_dict()
    report = TransplantReport()
    for key, value in source.items():  # check everything before writing anything
        if key not in target:
            report.dropped.append(key)
        elif target[key].shape == value.shape:
            report.copied.append(key)
        elif target[key].numel() == value.numel():
            report.coerced.append(key)
        else:
            raise ValueError(
                f"shape mismatch for {key!r}: the weights have {tuple(value.shape)}, "
                f"the model expects {tuple(target[key].shape)}"
            )
    report.missing = [key for key in target if key not in source]
    if strict and (report.dropped or report.missing):
        details = []
        if report.missing:
            details.append(f"missing from the weights: {', '.join(report.missing[:5])}")
        if report.dropped:
            details.append(f"not in the model: {', '.join(report.dropped[:5])}")
        raise WeightMismatchError("weights do not match the model; " + "; ".join(details))
    with torch.no_grad():
        for key in report.copied + report.coerced:
            target[key].copy_(source[key].reshape(target[key].shape))
    return report


def class_layers(
    src: Mapping[str, torch.Tensor], dst: nn.Module, heads: Sequence[str]
) -> list[str]:
    """The layers under ``heads`` (module names of ``dst``) whose tensors in ``src`` have
    other shapes than ``dst``'s: score and upsampling layers made for another class count.

    Fine-tuning a trained net on another label set keeps its features and starts these
    anew, as Section 4.3 starts the score layers of a net made from a classifier; a shape
    mismatch outside the heads is a different backbone, for ``transplant`` to refuse.
    """
    shapes = {key: tensor.shape for key, tensor in dst.state_dict().items()}
    layers: list[str] = []
    for key, tensor in src.items():
        layer = key.rpartition(".")[0]
        inside = any(layer == head or layer.startswith(head + ".") for head in heads)
        if inside and key in shapes and shapes[key] != tensor.shape and layer not in layers:
            layers.append(layer)
    return layers


def without_layers(state: Mapping[str, torch.Tensor], layers: Sequence[str]) -> dict:
    """``state`` without the tensors of ``layers`` (module names): what ``transplant`` then
    leaves as the target initialised them."""
    return {key: value for key, value in state.items() if key.rpartition(".")[0] not in layers}


def expand_score(model: nn.Module, num_classes: int) -> nn.Module:
    """Give a trained FCN ``num_classes`` outputs, keeping the first classes' weights.

    Every score layer (1x1 convolution producing class scores) keeps the rows of the
    classes both counts share and starts the others at zero, as new score layers do;
    every class-to-class upsampling keeps its weights on the shared classes and starts
    the new diagonal entries bilinear. The reference's ``expand_score`` does the same to
    fine-tune a 21-class net on a larger label set. Works in place and returns ``model``.
    """
    head = getattr(model, "head", model)
    if not hasattr(head, "resize_classes"):
        raise TypeError(f"{type(model).__name__} has no score layers to resize")
    head.resize_classes(num_classes)
    return model
