"""torchvision vgg16 and resnet18/34/50/101 weight files, written here under torchvision's
names, loaded into our backbones by ``load_backbone_weights``.

The state dicts are built from torchvision's architecture description (the cfg list of
vgg16, the block counts and widths of each resnet), not from our modules, so a wrong
key table in fcnseg cannot agree with itself. The VGG16 is slimmed (same layers and
geometry, fewer channels) to keep the files small.
"""

from __future__ import annotations

import pytest
import torch

from fcnseg.models.backbones import VGG16, resnet18, resnet34, resnet50, resnet101
from fcnseg.models.normalization import CAFFE_VOC, IMAGENET
from fcnseg.surgery import WeightMismatchError
from fcnseg.weights import detect_layout, load_backbone_weights

# torchvision vgg16 cfg "D": channels of each 3x3 conv, "M" a max pool
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
OUR_VGG_NAMES = [
    f"conv{b}_{i}"
    for b, n in zip(range(1, 6), (2, 2, 3, 3, 3), strict=True)
    for i in range(1, n + 1)
]
SLIM = {64: 4, 128: 6, 256: 8, 512: 10}  # channel map for the slim test net
SLIM_FC = 12

pytestmark = pytest.mark.usefixtures("one_thread")


def randn(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=generator)


def vgg16_features(generator: torch.Generator) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``features.N`` weights of a slim vgg16, and which of our layers each N should be."""
    state, names, index, channels = {}, {}, 0, 3
    convs = iter(OUR_VGG_NAMES)
    for item in VGG16_CFG:
        if item == "M":
            index += 1  # MaxPool2d
            continue
        width = SLIM[item]
        state[f"features.{index}.weight"] = randn(generator, width, channels, 3, 3)
        state[f"features.{index}.bias"] = randn(generator, width)
        names[f"features.{index}"] = next(convs)
        index += 2  # Conv2d, ReLU
        channels = width
    return state, names


def torchvision_vgg16(generator: torch.Generator) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    state, names = vgg16_features(generator)
    last = SLIM[512]
    for index, (name, inputs, outputs) in zip(
        (0, 3, 6),
        (("fc6", last * 7 * 7, SLIM_FC), ("fc7", SLIM_FC, SLIM_FC), ("fc8", SLIM_FC, 1000)),
        strict=True,
    ):
        state[f"classifier.{index}.weight"] = randn(generator, outputs, inputs)  # Linear
        state[f"classifier.{index}.bias"] = randn(generator, outputs)
        names[f"classifier.{index}"] = name
    return state, names


def slim_vgg16(*, classifier: bool) -> VGG16:
    widths = tuple(SLIM[w] for w in (64, 128, 256, 512, 512))
    return VGG16(widths=widths, fc_channels=SLIM_FC, classifier=classifier)


def bn(state: dict, name: str, channels: int, generator: torch.Generator, tracked: bool) -> None:
    state[f"{name}.weight"] = randn(generator, channels)
    state[f"{name}.bias"] = randn(generator, channels)
    state[f"{name}.running_mean"] = randn(generator, channels)
    state[f"{name}.running_var"] = torch.rand(channels, generator=generator) + 0.5
    if tracked:
        state[f"{name}.num_batches_tracked"] = torch.tensor(100)


def torchvision_resnet(
    depths: tuple[int, ...], bottleneck: bool, seed: int = 0, tracked: bool = True
) -> dict[str, torch.Tensor]:
    """A torchvision resnet state dict: conv1, bn1, layerS.B.*, downsample.0/1, fc."""
    generator = torch.Generator().manual_seed(seed)
    state = {"conv1.weight": randn(generator, 64, 3, 7, 7)}
    bn(state, "bn1", 64, generator, tracked)
    channels = 64
    for stage, (width, depth) in enumerate(zip((64, 128, 256, 512), depths, strict=True), 1):
        out = width * (4 if bottleneck else 1)
        for block in range(depth):
            prefix = f"layer{stage}.{block}"
            if bottleneck:
                convs = ((width, channels, 1), (width, width, 3), (out, width, 1))
            else:
                convs = ((width, channels, 3), (width, width, 3))
            for k, (o, i, size) in enumerate(convs, 1):
                state[f"{prefix}.conv{k}.weight"] = randn(generator, o, i, size, size)
                bn(state, f"{prefix}.bn{k}", o, generator, tracked)
            if block == 0 and (stage > 1 or channels != out):
                state[f"{prefix}.downsample.0.weight"] = randn(generator, out, channels, 1, 1)
                bn(state, f"{prefix}.downsample.1", out, generator, tracked)
            channels = out
    state["fc.weight"] = randn(generator, 1000, channels)
    state["fc.bias"] = randn(generator, 1000)
    return state


RESNETS = {
    "resnet18": (resnet18, (2, 2, 2, 2), False),
    "resnet34": (resnet34, (3, 4, 6, 3), False),
    "resnet50": (resnet50, (3, 4, 6, 3), True),
    "resnet101": (resnet101, (3, 4, 23, 3), True),
}


# ----------------------------------------------------------------------------- vgg16


@pytest.mark.parametrize("classifier", [True, False])
def test_torchvision_vgg16_file_round_trips(tmp_path, classifier: bool) -> None:
    state, names = torchvision_vgg16(torch.Generator().manual_seed(1))
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    backbone = slim_vgg16(classifier=classifier)
    assert backbone.normalization == CAFFE_VOC
    report = load_backbone_weights(backbone, path)
    ours = backbone.state_dict()
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        name = names[module]
        if name == "fc8" and not classifier:
            assert key in report.dropped
            continue
        target = ours[f"{name}.{param}"]
        assert torch.equal(target, value.reshape(target.shape)), key
    coerced = {"fc6.weight", "fc7.weight"} | ({"fc8.weight"} if classifier else set())
    assert set(report.coerced) == coerced  # Linear weights reshaped into convolutions
    assert report.missing == []
    assert backbone.normalization == IMAGENET  # torchvision weights read standardised RGB


def test_torchvision_vgg16_fc6_is_the_linear_layer_on_each_window() -> None:
    """fc6 as a 7x7 conv on a 7x7 map computes the Linear on the flattened map."""
    state, _ = torchvision_vgg16(torch.Generator().manual_seed(2))
    backbone = slim_vgg16(classifier=False)
    load_backbone_weights(backbone, state)
    pool5 = torch.randn(1, SLIM[512], 7, 7)
    linear = pool5.reshape(1, -1) @ state["classifier.0.weight"].T + state["classifier.0.bias"]
    conv = backbone.fc6(pool5).reshape(1, -1)
    torch.testing.assert_close(conv, linear, rtol=1e-4, atol=1e-4)


def test_vgg16_shape_mismatch_names_the_file_key(tmp_path) -> None:
    state, _ = torchvision_vgg16(torch.Generator().manual_seed(3))
    state["features.12.weight"] = torch.zeros(8, 8, 5, 5)  # conv3_2 with a 5x5 kernel
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    backbone = slim_vgg16(classifier=False)
    before = backbone.conv1_1.weight.clone()
    with pytest.raises(ValueError, match=r"bad\.pth.*'features\.12\.weight'.*conv3_2\.weight"):
        load_backbone_weights(backbone, path)
    assert torch.equal(backbone.conv1_1.weight, before)  # nothing written
    assert backbone.normalization == CAFFE_VOC


def test_vgg16_missing_key_is_named() -> None:
    state, _ = torchvision_vgg16(torch.Generator().manual_seed(4))
    del state["features.28.bias"]
    with pytest.raises(WeightMismatchError, match=r"missing from the weights: conv5_3\.bias"):
        load_backbone_weights(slim_vgg16(classifier=False), state)


def test_vgg16_bn_keys_are_refused() -> None:
    state, _ = torchvision_vgg16(torch.Generator().manual_seed(5))
    state["features.1.running_mean"] = torch.zeros(4)  # vgg16_bn puts a BatchNorm here
    with pytest.raises(WeightMismatchError, match=r"unexpected key 'features\.1\.running_mean'"):
        load_backbone_weights(slim_vgg16(classifier=False), state)


# ----------------------------------------------------------------------------- resnet


def test_torchvision_resnet_file_round_trips(tmp_path) -> None:
    state = torchvision_resnet((2, 2, 2, 2), False)
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    backbone = resnet18(classifier=True)
    report = load_backbone_weights(backbone, path, source="torchvision")
    ours = backbone.state_dict()
    assert set(ours) == set(state)
    for key, value in state.items():
        assert torch.equal(ours[key], value.reshape(ours[key].shape)), key
    assert report.coerced == ["fc.weight"] and report.dropped == [] and report.missing == []
    assert backbone.normalization == IMAGENET


@pytest.mark.parametrize("name", ["resnet34", "resnet50", "resnet101"])
def test_deeper_resnets_map_every_key(name: str) -> None:
    builder, depths, bottleneck = RESNETS[name]
    state = torchvision_resnet(depths, bottleneck, tracked=False)  # files from before 0.4.1
    backbone = builder()
    report = load_backbone_weights(backbone, state)
    assert sorted(report.dropped) == ["fc.bias", "fc.weight"]  # built without classifier
    assert report.missing == [k for k in backbone.state_dict() if "num_batches_tracked" in k]
    key = f"layer3.{depths[2] - 1}.conv2.weight"
    assert torch.equal(backbone.state_dict()[key], state[key])


def test_resnet_wrappers_and_prefixes_are_unwrapped(tmp_path) -> None:
    state = torchvision_resnet((2, 2, 2, 2), False, seed=6)
    wrapped = {"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}
    path = tmp_path / "checkpoint.pth"
    torch.save(wrapped, path)
    backbone = resnet18()
    load_backbone_weights(backbone, path)
    assert torch.equal(backbone.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])


def test_resnet_shape_mismatch_names_the_first_key(tmp_path) -> None:
    state = torchvision_resnet((2, 2, 2, 2), False, seed=7)
    state["layer2.0.conv1.weight"] = torch.zeros(128, 32, 3, 3)
    state["layer3.0.conv1.weight"] = torch.zeros(256, 32, 3, 3)
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    with pytest.raises(
        ValueError, match=r"'layer2\.0\.conv1\.weight'.*\(128, 32, 3, 3\).*\(128, 64, 3, 3\)"
    ):
        load_backbone_weights(resnet18(), path)


def test_resnet_missing_key_and_wrong_depth() -> None:
    state = torchvision_resnet((2, 2, 2, 2), False, seed=8)
    del state["layer3.1.bn2.running_var"]
    with pytest.raises(WeightMismatchError, match=r"missing from the weights: layer3\.1\.bn2"):
        load_backbone_weights(resnet18(), state)
    deeper = torchvision_resnet((3, 4, 6, 3), False, seed=9)  # resnet34 into resnet18
    with pytest.raises(WeightMismatchError, match=r"not in the backbone: layer1\.2\.conv1"):
        load_backbone_weights(resnet18(), deeper)


def test_layout_and_backbone_must_agree(tmp_path) -> None:
    state = torchvision_resnet((2, 2, 2, 2), False, seed=10)
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"r18\.pth: these are torchvision/timm resnet.*VGG16"):
        load_backbone_weights(slim_vgg16(classifier=False), path)
    with pytest.raises(ValueError, match="not package weights"):
        load_backbone_weights(resnet18(), path, source="package")
    with pytest.raises(ValueError, match="unknown weights source"):
        load_backbone_weights(resnet18(), path, source="caffe")
    with pytest.raises(ValueError, match=r"not a known weights layout \(keys start stem\.w"):
        load_backbone_weights(resnet18(), {"stem.w": torch.zeros(1)})
    with pytest.raises(FileNotFoundError, match="not found"):
        load_backbone_weights(resnet18(), tmp_path / "absent.pth")


def test_detect_layout() -> None:
    state, _ = torchvision_vgg16(torch.Generator().manual_seed(11))
    assert detect_layout(state).name == "torchvision vgg16"
    assert detect_layout(torchvision_resnet((2, 2, 2, 2), False)).name == (
        "torchvision/timm resnet"
    )
