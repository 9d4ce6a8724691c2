"""Early fusion (a wider first layer) and late fusion (summed stream scores) for NYUDv2."""

import copy
import io

import numpy as np
import pytest
import torch
from slim_models import SLIM, slim_vgg16
from torch import nn

import fcnseg
from fcnseg.data import NYUD_NORMALIZATION, LogDepth
from fcnseg.models import FCN, FCNHead, ModelSpec
from fcnseg.models.backbones import BACKBONES, VGG16
from fcnseg.models.fusion import (
    LateFusionHead,
    StreamBackbones,
    caffe_rename,
    expand_input_channels,
    find_stem,
    late_fusion,
)
from fcnseg.models.inputs import split_inputs
from fcnseg.weights import CaffeLayer, convert_caffe

NEW = ["fcn32s_vgg16_rgbd", "fcn16s_vgg16_rgbd", "fcn32s_vgg16_hha", "fcn16s_vgg16_hha"]
NEW += ["fcn32s_vgg16_rgbhha_late", "fcn16s_vgg16_rgbhha_late"]


@pytest.fixture(autouse=True)
def slim_backbone(monkeypatch):
    monkeypatch.setitem(BACKBONES, SLIM, slim_vgg16)


def slim_fcn(variant: str, classes: int = 5, seed: int = 0, geometry: str = "aligned") -> FCN:
    """A VGG16 with a few channels: fast, same code paths (the reference's pad-100 geometry
    where it matters)."""
    torch.manual_seed(seed)
    spec = ModelSpec(SLIM, variant, tasks={"semantic": classes}, geometry=geometry)
    fcn = fcnseg.build_model(spec)
    for module in fcn.head.modules():  # score layers start at zero; make them matter
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, std=0.1)
            nn.init.normal_(module.bias, std=0.1)
    return fcn.eval()


# ----------------------------------------------------------------------------- early fusion


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_the_stem_is_the_convolution_that_reads_the_image(name):
    with torch.device("meta"):
        three, four = BACKBONES[name](in_channels=3), BACKBONES[name](in_channels=4)
    widened = [
        n
        for (n, a), (_, b) in zip(three.named_modules(), four.named_modules(), strict=True)
        if isinstance(a, nn.Conv2d) and a.in_channels != b.in_channels
    ]
    assert widened == [find_stem(three)[0]]


def test_expansion_keeps_rgb_filters_and_starts_depth_at_their_mean():
    fcn = slim_fcn("32s")
    rgb = fcn.backbone.conv1_1.weight.detach().clone()
    x = torch.randn(1, 3, 37, 45)
    with torch.no_grad():
        before = fcn.backbone(x)["fc7"]
    expand_input_channels(fcn.backbone, 1)
    weight = fcn.backbone.conv1_1.weight
    assert weight.shape == (4, 4, 3, 3) and fcn.backbone.conv1_1.in_channels == 4
    torch.testing.assert_close(weight[:, :3], rgb, rtol=0, atol=0)
    torch.testing.assert_close(weight[:, 3], rgb.mean(dim=1), rtol=0, atol=0)  # reference
    assert weight.requires_grad
    with torch.no_grad():  # a zero depth channel changes nothing
        after = fcn.backbone(torch.cat([x, torch.zeros(1, 1, 37, 45)], 1))["fc7"]
    torch.testing.assert_close(after, before)
    expand_input_channels(fcn.backbone, 3, init="zeros")  # a backbone works too
    assert fcn.backbone.conv1_1.weight.shape[1] == 7
    assert fcn.backbone.conv1_1.weight[:, 4:].abs().sum() == 0
    with pytest.raises(ValueError, match="unknown init"):
        expand_input_channels(fcn, 1, init="copy")
    with pytest.raises(ValueError, match="positive"):
        expand_input_channels(fcn, 0)


def test_early_fusion_reads_a_stacked_tensor_a_dict_or_a_tuple():
    torch.manual_seed(0)
    model = fcnseg.build_model("fcn16s_vgg16_rgbd", num_classes=5, backbone=SLIM).eval()
    for module in model.head.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, std=0.1)
    color, depth = torch.randn(2, 3, 29, 41), torch.randn(2, 1, 29, 41)
    with torch.no_grad():
        stacked = model(torch.cat([color, depth], 1))
        torch.testing.assert_close(model({"depth": depth, "color": color}), stacked)
        torch.testing.assert_close(model((color, depth)), stacked)
    assert stacked.shape == (2, 5, 29, 41) and model.spec.in_channels == 4
    assert model.backbone.conv1_1.in_channels == 4 and not model.late_fusion
    assert set(model.normalization) == {"color", "depth"}
    with pytest.raises(ValueError, match=r"N x 4 x H x W"):
        model(color)
    with pytest.raises(ValueError, match="do not match the model's"):
        model({"color": color, "hha": color})


def test_split_inputs_checks_sizes():
    with pytest.raises(ValueError, match="input 'depth' is"):
        split_inputs(
            {"color": torch.zeros(1, 3, 8, 8), "depth": torch.zeros(1, 1, 8, 9)},
            {"color": 3, "depth": 1},
        )


# ----------------------------------------------------------------------------- late fusion


@pytest.mark.parametrize("variant", ["32s", "16s", "8s"])
def test_late_fusion_is_the_mean_of_the_two_nets(variant):
    """Scores summed 0.5 / 0.5, then one shared upsampling: every step after the score
    layers is linear, so the fused net computes exactly the mean of the streams' outputs."""
    color = slim_fcn(variant, seed=1, geometry="caffe")
    hha = slim_fcn(variant, seed=2, geometry="caffe")
    x_color, x_hha = torch.randn(1, 3, 33, 47), torch.randn(1, 3, 33, 47)
    with torch.no_grad():
        expected = 0.5 * color(x_color) + 0.5 * hha(x_hha)
    fused = late_fusion({"color": copy.deepcopy(color), "hha": copy.deepcopy(hha)}).eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(torch.cat([x_color, x_hha], 1)), expected)
        torch.testing.assert_close(fused({"color": x_color, "hha": x_hha}), expected)
    assert fused.spec.in_channels == 6 and fused.spec.input_names == ("color", "hha")
    assert fused.late_fusion and fused.spec.fusion_weights == (0.5, 0.5)
    assert fused.head.crop_offsets() == color.head.crop_offsets()


def test_late_fusion_keeps_the_reference_layer_names():
    fused = late_fusion({"color": slim_fcn("16s"), "hha": slim_fcn("16s", seed=1)})
    keys = set(fused.state_dict())
    for key in (
        "backbone.color.conv1_1.weight",
        "backbone.hha.fc7.bias",
        "head.score_frcolor.weight",
        "head.score_frhha.bias",
        "head.score_pool4color.weight",
        "head.score_pool4hha.weight",
        "head.upscore2.weight",
        "head.upscore16.weight",
    ):
        assert key in keys
    assert not any(key.startswith("head.score_fr.") for key in keys)
    assert fused.head.weights == {"color": 0.5, "hha": 0.5}


def test_late_fusion_trains_both_streams_jointly():
    fused = late_fusion({"color": slim_fcn("16s"), "hha": slim_fcn("16s", seed=1)}).train()
    out = fused(torch.randn(2, 6, 41, 37))
    assert out.shape == (2, 5, 41, 37)
    out.square().mean().backward()
    for stream in ("color", "hha"):
        assert fused.backbone.get_submodule(stream).conv1_1.weight.grad.abs().sum() > 0
        for layer in ("score_fr", "score_pool4"):
            assert fused.head.get_submodule(layer + stream).weight.grad.abs().sum() > 0
    assert fused.head.upscore2.weight.grad is None  # fixed bilinear, as the reference


def test_late_fusion_refuses_streams_that_do_not_line_up():
    with pytest.raises(ValueError, match="differs from the first"):
        late_fusion({"color": slim_fcn("16s"), "hha": slim_fcn("32s")})
    with pytest.raises(ValueError, match="two inputs or more"):
        late_fusion({"color": slim_fcn("16s")})
    with pytest.raises(ValueError, match="fusion weights"):
        late_fusion({"a": slim_fcn("32s"), "b": slim_fcn("32s")}, weights={"a": 1.0})


def test_reference_caffe_names_convert_one_to_one():
    """A caffemodel of nyud-fcn16s-style RGB-HHA layers loads by name with caffe_rename."""
    source = late_fusion({"color": slim_fcn("16s", seed=3), "hha": slim_fcn("16s", seed=4)})
    layers = []
    for module_name, module in source.named_modules():
        if not isinstance(module, (nn.Conv2d,)) and not hasattr(module, "kernel_size"):
            continue
        parts = module_name.split(".")
        if parts[0] == "backbone":
            caffe = parts[2] + parts[1]  # conv1_1color
        else:
            caffe = parts[1]  # score_frcolor, upscore2
        params = [p.detach().numpy().copy() for p in module.parameters(recurse=False)]
        if params:
            layers.append(CaffeLayer(caffe, "Convolution", params))
    assert {"conv1_1color", "fc7hha", "score_frcolor", "score_pool4hha", "upscore16"} <= {
        layer.name for layer in layers
    }
    target = late_fusion({"color": slim_fcn("16s", seed=5), "hha": slim_fcn("16s", seed=6)})
    report = convert_caffe(layers, target, rename=caffe_rename)
    assert not report.dropped and not report.missing
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value, rtol=0, atol=0)
    assert caffe_rename("conv1_1_bgrd") == "backbone.conv1_1"
    assert caffe_rename("fc6") == "fc6"


# ----------------------------------------------------------------------------- registered nets


def test_registered_nyud_nets_have_the_right_inputs_and_layers():
    with torch.device("meta"):
        models = {name: fcnseg.build_model(name, num_classes=40) for name in NEW}
    assert set(NEW) <= set(fcnseg.list_models())
    assert all(model.name == name for name, model in models.items())
    voc, hha = VGG16().normalization, NYUD_NORMALIZATION["hha"]

    rgbd = models["fcn32s_vgg16_rgbd"]
    assert rgbd.spec.fusion == "early" and rgbd.spec.in_channels == 4
    assert rgbd.backbone.conv1_1.weight.shape == (64, 4, 3, 3)
    assert rgbd.normalization == {"color": voc, "depth": LogDepth()}

    assert models["fcn16s_vgg16_hha"].normalization == hha  # one input: a plain FCN
    assert isinstance(models["fcn16s_vgg16_hha"].head, FCNHead)

    late = models["fcn16s_vgg16_rgbhha_late"]
    assert late.late_fusion and late.spec.in_channels == 6
    assert isinstance(late.backbone, StreamBackbones) and isinstance(late.head, LateFusionHead)
    assert late.normalization == {"color": voc, "hha": hha}
    assert late.backbone.geometry == "caffe" and late.head.score_stride == 16
    assert late.head.crop_offsets() == {"score_pool4c": 5, "score": 27}  # the reference's
    assert "head.upscore.weight" in models["fcn32s_vgg16_rgbhha_late"].state_dict()
    assert models["fcn32s_vgg16_rgbhha_late"].head.crop_offsets() == {"score": 19}


def test_registered_nets_name_their_channel_count_when_asked_for_another():
    with pytest.raises(ValueError, match=r"reads 4 channels \(color 3 \+ depth 1\)"):
        fcnseg.build_model("fcn32s_vgg16_rgbd", num_classes=40, in_channels=3)
    with pytest.raises(ValueError, match="reads 6 channels"):
        fcnseg.build_model("fcn32s_vgg16_rgbhha_late", num_classes=40, in_channels=3)


def test_state_dict_round_trips_through_a_fresh_fused_net():
    fused = late_fusion({"color": slim_fcn("32s", seed=7), "hha": slim_fcn("32s", seed=8)})
    buffer = io.BytesIO()
    torch.save(fused.state_dict(), buffer)
    buffer.seek(0)
    clone = late_fusion({"color": slim_fcn("32s", seed=9), "hha": slim_fcn("32s", seed=10)})
    clone.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(1, 6, 1, 1)  # any input size, down to one pixel
    with torch.no_grad():
        out = fused.eval()(x)
        torch.testing.assert_close(clone.eval()(x), out, rtol=0, atol=0)
        torch.testing.assert_close(fused(x), out, rtol=0, atol=0)  # deterministic in eval
    assert out.shape == (1, 5, 1, 1)
    assert np.isfinite(out.numpy()).all()
