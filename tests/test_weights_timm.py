"""timm weight files (vgg16, resnet, tf_efficientnet_lite0/1/2), written here under timm's
names, loaded into our backbones by ``load_backbone_weights``.

The timm state dicts follow timm's own description of each net: vgg.py (features.N,
pre_logits.fc1/fc2 as convolutions, head.fc), and efficientnet.py's
``_gen_efficientnet_lite`` arch_def (ds_r1_k3_s1_e1_c16, ir_r2_k3_s2_e6_c24, ...) with
the blocks of _efficientnet_blocks.py (DepthwiseSeparableConv: conv_dw, bn1, conv_pw,
bn2; InvertedResidual: conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3). A forward pass
written here over the timm-named tensors checks that each tensor lands where it acts.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fcnseg.models.backbones import (
    VGG16,
    efficientnet_lite0,
    efficientnet_lite1,
    efficientnet_lite2,
    resnet18,
)
from fcnseg.models.normalization import EFFICIENTNET_LITE, IMAGENET
from fcnseg.surgery import WeightMismatchError
from fcnseg.weights import detect_layout, load_backbone_weights
from fcnseg.weights.foreign import TF_INCEPTION

# timm arch_def per stage: (block type, kernel, stride, expansion, channels, repeats)
ARCH = (
    ("ds", 3, 1, 1, 16, 1),
    ("ir", 3, 2, 6, 24, 2),
    ("ir", 5, 2, 6, 40, 2),
    ("ir", 3, 2, 6, 80, 3),
    ("ir", 5, 1, 6, 112, 3),
    ("ir", 5, 2, 6, 192, 4),
    ("ir", 3, 1, 6, 320, 1),
)
# (channel multiplier, depth multiplier) of tf_efficientnet_lite0/1/2
SCALING = {0: (1.0, 1.0), 1: (1.0, 1.1), 2: (1.1, 1.2)}
BUILDERS = {0: efficientnet_lite0, 1: efficientnet_lite1, 2: efficientnet_lite2}

pytestmark = pytest.mark.usefixtures("one_thread")


def make_divisible(value: float, divisor: int = 8) -> int:
    """timm's round_channels: nearest multiple of 8, never 10% below the value."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def stages(variant: int) -> list[tuple[str, int, int, int, int, int]]:
    """The arch_def scaled: channels by the width, repeats by the depth (not the first
    and last stage: ``fix_first_last``)."""
    width, depth = SCALING[variant]
    scaled = []
    for index, (kind, kernel, stride, expand, channels, repeats) in enumerate(ARCH):
        if index not in (0, len(ARCH) - 1):
            repeats = math.ceil(repeats * depth)
        scaled.append((kind, kernel, stride, expand, make_divisible(channels * width), repeats))
    return scaled


def bn(state: dict, name: str, channels: int, generator: torch.Generator) -> None:
    state[f"{name}.weight"] = 1 + 0.1 * torch.randn(channels, generator=generator)
    state[f"{name}.bias"] = 0.1 * torch.randn(channels, generator=generator)
    state[f"{name}.running_mean"] = 0.1 * torch.randn(channels, generator=generator)
    state[f"{name}.running_var"] = 0.5 + torch.rand(channels, generator=generator)
    state[f"{name}.num_batches_tracked"] = torch.tensor(7)


def timm_lite(variant: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A tf_efficientnet_lite{variant} state dict under timm's names."""
    generator = torch.Generator().manual_seed(seed)

    def conv(name: str, out: int, inputs: int, kernel: int) -> None:
        fan_in = inputs * kernel * kernel
        weight = torch.randn(out, inputs, kernel, kernel, generator=generator)
        state[f"{name}.weight"] = weight * (2 / fan_in) ** 0.5

    state: dict[str, torch.Tensor] = {}
    conv("conv_stem", 32, 3, 3)
    bn(state, "bn1", 32, generator)
    channels = 32
    for s, (kind, kernel, _, expand, out, repeats) in enumerate(stages(variant)):
        for b in range(repeats):
            p = f"blocks.{s}.{b}"
            if kind == "ds":
                conv(f"{p}.conv_dw", channels, 1, kernel)
                bn(state, f"{p}.bn1", channels, generator)
                conv(f"{p}.conv_pw", out, channels, 1)
                bn(state, f"{p}.bn2", out, generator)
            else:
                mid = channels * expand
                conv(f"{p}.conv_pw", mid, channels, 1)
                bn(state, f"{p}.bn1", mid, generator)
                conv(f"{p}.conv_dw", mid, 1, kernel)
                bn(state, f"{p}.bn2", mid, generator)
                conv(f"{p}.conv_pwl", out, mid, 1)
                bn(state, f"{p}.bn3", out, generator)
            channels = out
    conv("conv_head", 1280, channels, 1)
    bn(state, "bn2", 1280, generator)
    state["classifier.weight"] = 0.01 * torch.randn(1000, 1280, generator=generator)
    state["classifier.bias"] = torch.zeros(1000)
    return state


def same_padding(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow 'SAME': total pad max((ceil(n / s) - 1) s + k - n, 0), the odd pixel
    at the bottom / right (timm's pad_same)."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad order: width first
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def timm_lite_features(
    state: dict[str, torch.Tensor], x: torch.Tensor, variant: int, *, same: bool = False
):
    """timm's EfficientNet forward_features over the timm-named tensors. ``same``: pad
    as the tf_ ports do (TF 'SAME'); else symmetrically by (k - 1) / 2, as fcnseg."""

    def conv_bn(x, conv, norm, *, stride=1, depthwise=False, act=True):
        weight = state[f"{conv}.weight"]
        groups = x.shape[1] if depthwise else 1
        kernel = weight.shape[-1]
        if same:
            x = F.conv2d(same_padding(x, kernel, stride), weight, stride=stride, groups=groups)
        else:
            x = F.conv2d(x, weight, stride=stride, padding=(kernel - 1) // 2, groups=groups)
        x = F.batch_norm(
            x,
            state[f"{norm}.running_mean"],
            state[f"{norm}.running_var"],
            state[f"{norm}.weight"],
            state[f"{norm}.bias"],
            training=False,
            eps=1e-3,  # timm's BN_EPS_TF_DEFAULT for the tf_ ports
        )
        return F.relu6(x) if act else x

    x = conv_bn(x, "conv_stem", "bn1", stride=2)
    for s, (kind, _, stride, _, _, repeats) in enumerate(stages(variant)):
        for b in range(repeats):
            p, step, shortcut = f"blocks.{s}.{b}", stride if b == 0 else 1, x
            if kind == "ds":
                x = conv_bn(x, f"{p}.conv_dw", f"{p}.bn1", stride=step, depthwise=True)
                x = conv_bn(x, f"{p}.conv_pw", f"{p}.bn2", act=False)
            else:
                x = conv_bn(x, f"{p}.conv_pw", f"{p}.bn1")
                x = conv_bn(x, f"{p}.conv_dw", f"{p}.bn2", stride=step, depthwise=True)
                x = conv_bn(x, f"{p}.conv_pwl", f"{p}.bn3", act=False)
            if x.shape == shortcut.shape:
                x = x + shortcut
    return conv_bn(x, "conv_head", "bn2")


# ----------------------------------------------------------------------------- efficientnet


def test_tf_efficientnet_lite0_acts_like_timm(tmp_path) -> None:
    state = timm_lite(0)
    path = tmp_path / "tf_efficientnet_lite0.pth"
    torch.save(state, path)
    backbone = efficientnet_lite0(classifier=True).eval()
    assert backbone.normalization == EFFICIENTNET_LITE
    report = load_backbone_weights(backbone, path, source="timm")
    assert report.coerced == ["_fc.weight"] and report.missing == [] and report.dropped == []
    assert backbone.normalization == TF_INCEPTION  # timm's tf_ ports: (x - 0.5) / 0.5
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = timm_lite_features(state, x, 0)
        got = backbone(x)["head"]
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        logits = backbone.classify(x).mean((2, 3))
    pooled = expected.mean((2, 3)) @ state["classifier.weight"].T + state["classifier.bias"]
    torch.testing.assert_close(logits, pooled, rtol=1e-4, atol=1e-4)


def test_same_padding_agrees_on_sizes_32k_plus_1() -> None:
    """'SAME' pads a stride-2 layer symmetrically when its input is odd: on 32k + 1 every
    stride-2 layer sees an odd size and the tf_ port's features equal ours exactly; on
    even sizes its windows sit one pixel lower / further right."""
    state = timm_lite(0, seed=3)
    backbone = efficientnet_lite0().eval()
    load_backbone_weights(backbone, state)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        odd = torch.randn(1, 3, 33, 65, generator=generator)
        torch.testing.assert_close(
            backbone(odd)["head"], timm_lite_features(state, odd, 0, same=True)
        )
        even = torch.randn(1, 3, 32, 64, generator=generator)
        shifted = timm_lite_features(state, even, 0, same=True)
        assert not torch.allclose(backbone(even)["head"], shifted, atol=1e-3)


@pytest.mark.parametrize("variant", [1, 2])
def test_tf_efficientnet_lite1_lite2_map_every_key(variant: int) -> None:
    state = timm_lite(variant, seed=variant)
    backbone = BUILDERS[variant]()
    report = load_backbone_weights(backbone, state)
    assert sorted(report.dropped) == ["classifier.bias", "classifier.weight"]
    assert report.missing == [] and report.coerced == []
    ours = backbone.state_dict()
    last_stage = len(ARCH) - 1
    assert torch.equal(ours["_blocks.0._depthwise_conv.weight"], state["blocks.0.0.conv_dw.weight"])
    assert torch.equal(ours["_blocks.1._bn0.running_var"], state["blocks.1.0.bn1.running_var"])
    flat_last = len(backbone._blocks) - 1
    assert torch.equal(
        ours[f"_blocks.{flat_last}._project_conv.weight"],
        state[f"blocks.{last_stage}.0.conv_pwl.weight"],
    )
    assert torch.equal(ours["_bn1.bias"], state["bn2.bias"])  # the head's batch norm


def test_lite_variant_mismatch_names_the_first_key() -> None:
    with pytest.raises(ValueError, match=r"shape mismatch at 'blocks\.1\.2\.conv_dw\.weight'"):
        load_backbone_weights(efficientnet_lite0(), timm_lite(1))  # lite1 has 3 blocks there
    state = timm_lite(0)
    del state["blocks.3.1.bn2.running_mean"]
    with pytest.raises(WeightMismatchError, match=r"missing from the weights: _blocks\.6\._bn1"):
        load_backbone_weights(efficientnet_lite0(), state)


def test_squeeze_excite_blocks_are_refused() -> None:
    state = timm_lite(0)
    state["blocks.1.0.se.conv_reduce.weight"] = torch.zeros(4, 96, 1, 1)  # tf_efficientnet_b0
    with pytest.raises(WeightMismatchError, match=r"unexpected key 'blocks\.1\.0\.se\."):
        load_backbone_weights(efficientnet_lite0(), state)


def test_normalization_override() -> None:
    backbone = efficientnet_lite0()
    load_backbone_weights(backbone, timm_lite(0), normalization=IMAGENET)  # non-tf timm
    assert backbone.normalization == IMAGENET


def test_package_layout_round_trips() -> None:
    ours = efficientnet_lite0(classifier=True).state_dict()
    state = {
        key: torch.randn(value.shape) if value.is_floating_point() else value
        for key, value in ours.items()
    }
    state["_fc.weight"] = state["_fc.weight"].reshape(1000, 1280)  # the package's Linear
    backbone = efficientnet_lite0(classifier=True)
    report = load_backbone_weights(backbone, state, source="package")
    assert report.coerced == ["_fc.weight"]
    assert torch.equal(backbone._blocks[7]._bn2.weight, state["_blocks.7._bn2.weight"])
    assert backbone.normalization == EFFICIENTNET_LITE


# ----------------------------------------------------------------------------- vgg16, resnet

# timm vgg16: features.N for the convolutions (N as torchvision), ConvMlp pre_logits.
VGG_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG_NAMES = [
    f"conv{b}_{i}"
    for b, n in zip(range(1, 6), (2, 2, 3, 3, 3), strict=True)
    for i in range(1, n + 1)
]
WIDTHS = (4, 6, 8, 10, 10)
FC = 12


def timm_vgg16(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    channels, state = 3, {}
    per_conv = [w for w, n in zip(WIDTHS, (2, 2, 3, 3, 3), strict=True) for _ in range(n)]
    for index, width in zip(VGG_CONVS, per_conv, strict=True):
        state[f"features.{index}.weight"] = torch.randn(width, channels, 3, 3, generator=generator)
        state[f"features.{index}.bias"] = torch.randn(width, generator=generator)
        channels = width
    state["pre_logits.fc1.weight"] = torch.randn(FC, channels, 7, 7, generator=generator)
    state["pre_logits.fc1.bias"] = torch.randn(FC, generator=generator)
    state["pre_logits.fc2.weight"] = torch.randn(FC, FC, 1, 1, generator=generator)
    state["pre_logits.fc2.bias"] = torch.randn(FC, generator=generator)
    state["head.fc.weight"] = torch.randn(1000, FC, generator=generator)  # a Linear
    state["head.fc.bias"] = torch.randn(1000, generator=generator)
    return state


def test_timm_vgg16_file_round_trips(tmp_path) -> None:
    state = timm_vgg16()
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    backbone = VGG16(widths=WIDTHS, fc_channels=FC, classifier=True)
    report = load_backbone_weights(backbone, path)
    ours = backbone.state_dict()
    for index, name in zip(VGG_CONVS, VGG_NAMES, strict=True):
        assert torch.equal(ours[f"{name}.weight"], state[f"features.{index}.weight"]), name
    assert torch.equal(ours["fc6.weight"], state["pre_logits.fc1.weight"])
    assert torch.equal(ours["fc7.bias"], state["pre_logits.fc2.bias"])
    assert torch.equal(ours["fc8.weight"].flatten(1), state["head.fc.weight"])
    assert report.coerced == ["fc8.weight"] and report.missing == []
    assert backbone.normalization == IMAGENET
    assert detect_layout(state).name == "timm vgg16"


def test_timm_vgg16_is_not_torchvision() -> None:
    with pytest.raises(ValueError, match="these are timm vgg16 weights, not torchvision"):
        load_backbone_weights(
            VGG16(widths=WIDTHS, fc_channels=FC), timm_vgg16(), source="torchvision"
        )


def test_timm_resnet_safetensors_file(tmp_path) -> None:
    """timm's hub ships model.safetensors; its resnet keys are torchvision's."""
    safetensors = pytest.importorskip("safetensors.torch")
    reference = resnet18(classifier=True).state_dict()
    state = {k: torch.randn(v.shape) if v.is_floating_point() else v for k, v in reference.items()}
    state["fc.weight"] = state["fc.weight"].reshape(1000, 512)
    path = tmp_path / "model.safetensors"
    safetensors.save_file(state, str(path))
    backbone = resnet18()
    report = load_backbone_weights(backbone, path, source="timm")
    assert torch.equal(
        backbone.layer2[0].downsample[1].running_var, state["layer2.0.downsample.1.running_var"]
    )
    assert sorted(report.dropped) == ["fc.bias", "fc.weight"]
