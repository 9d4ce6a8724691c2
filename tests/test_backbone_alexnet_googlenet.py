"""AlexNet and GoogLeNet backbones: declared taps, geometry, layer tables and names."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from torch import nn

from fcnseg.models import geometry as geo
from fcnseg.models.backbones.alexnet import AlexNet, caffe_lrn
from fcnseg.models.backbones.googlenet import GoogLeNet, Inception
from fcnseg.weights import load_backbone_weights

GEOMETRIES = ("caffe", "aligned")


@pytest.fixture(scope="module")
def alexnets() -> dict[str, AlexNet]:
    torch.manual_seed(0)
    return {g: AlexNet(geometry=g, classifier=True).eval() for g in GEOMETRIES}


@pytest.fixture(scope="module")
def googlenets() -> dict[str, GoogLeNet]:
    torch.manual_seed(0)
    return {g: GoogLeNet(geometry=g, classifier=True).eval() for g in GEOMETRIES}


# --- tap sizes: the documented rules ------------------------------------------------------


def alexnet_rows(size: int, geometry: str) -> dict[str, int]:
    """Rows of each tap: conv1 gives A rows, each valid 3x3/2 pool halves rounding down."""
    if geometry == "caffe":
        conv1 = (size + 2 * 100 - 11) // 4 + 1
        return {"pool1": conv1 // 2, "pool2": conv1 // 4, "fc7": conv1 // 8 - 5}  # fc6 6x6 pad 0
    conv1 = math.ceil(size / 4) + 2  # pad 9, as AlexNet's docstring states
    return {"pool1": conv1 // 2, "pool2": conv1 // 4, "fc7": conv1 // 8 + 1}  # fc6 6x6 pad 3


def googlenet_rows(size: int, geometry: str) -> dict[str, int]:
    conv1 = (size + 2 * 100 - 7) // 2 + 1 if geometry == "caffe" else math.ceil(size / 2)
    return {"inception_3b": conv1 // 4, "inception_4e": conv1 // 8, "inception_5b": conv1 // 16}


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("name", ["alexnet", "googlenet"])
def test_taps_match_a_real_forward(name, geometry, alexnets, googlenets):
    model, rows = (
        (alexnets[geometry], alexnet_rows)
        if name == "alexnet"
        else (googlenets[geometry], googlenet_rows)
    )
    with torch.no_grad():
        features = model(torch.randn(1, 3, 97, 131))
    assert list(features) == [tap.name for tap in model.taps]
    assert [tap.stride for tap in model.taps] == [8, 16, 32]
    for tap in model.taps:
        expected = (rows(97, geometry)[tap.name], rows(131, geometry)[tap.name])
        assert features[tap.name].shape == (1, tap.channels, *expected), tap.name
        assert model.coord_map(tap.name).scale == tap.stride
    assert model.output_stride == 32


# --- coord maps in the caffe geometry, derived by hand ------------------------------------
#
# A layer with kernel k, stride s, pad p puts output cell j at input s*j + (k-1)/2 - p;
# pools are 3x3/2 (j -> 2j + 1), the other convolutions are centred (identity).
# AlexNet:   conv1 11/4 pad 100: 4j - 95
#            pool1: 4(2j + 1) - 95 = 8j - 91          -> pool1 at 8j - 91
#            conv2 centred, pool2: 8(2j + 1) - 91     -> pool2 at 16j - 83
#            conv3..5 centred, pool5: 16(2j + 1) - 83 = 32j - 67
#            fc6 6x6 pad 0: j + 5/2 -> 32(j + 5/2) - 67 -> fc7 at 32j + 13
#            upscore 63/32 inverts 32i + 31: z -> (z - 31)/32 -> image z - 18: crop 18.
# GoogLeNet: conv1/7x7_s2 pad 100: 2j + 3 - 100 = 2j - 97
#            pool1: 2(2j + 1) - 97 = 4j - 95; conv2 centred
#            pool2: 4(2j + 1) - 95 = 8j - 91; inception 3a, 3b centred -> 8j - 91
#            pool3: 8(2j + 1) - 91 = 16j - 83; inception 4a..4e       -> 16j - 83
#            pool4: 16(2j + 1) - 83 = 32j - 67; inception 5a, 5b      -> 32j - 67

CAFFE_MAPS = {
    "pool1": (8, -91),
    "pool2": (16, -83),
    "fc7": (32, 13),
    "inception_3b": (8, -91),
    "inception_4e": (16, -83),
    "inception_5b": (32, -67),
}


@pytest.mark.parametrize("name", ["alexnet", "googlenet"])
def test_caffe_coord_maps_match_hand_derivation(name, alexnets, googlenets):
    model = (alexnets if name == "alexnet" else googlenets)["caffe"]
    for tap in model.taps:
        scale, shift = CAFFE_MAPS[tap.name]
        assert model.coord_map(tap.name) == geo.CoordMap(Fraction(scale), Fraction(shift))


def test_fcn_alexnet_crop_offset_is_the_reference_18(alexnets):
    upscore = alexnets["caffe"].coord_map("fc7").compose(geo.deconv_map(63, 32))
    assert upscore == geo.CoordMap(Fraction(1), Fraction(-18))
    assert geo.crop_offset(upscore, geo.IDENTITY) == 18


def test_aligned_alexnet_cells_cover_the_image(alexnets):
    """The docstring's claim: cells on the image, counts within one of ceil(H/s), cover."""
    model = alexnets["aligned"]
    assert [model.coord_map(t.name).shift for t in model.taps] == [0, 8, 8]
    slack = {"pool1": (0, 1, 0), "pool2": (-1, 0, 4), "fc7": (0, 1, 0)}  # count range, gap
    for size in range(32, 600):
        rows = alexnet_rows(size, "aligned")
        for tap in model.taps:
            s, first = tap.stride, model.coord_map(tap.name).shift
            low, high, gap = slack[tap.name]
            assert low <= rows[tap.name] - math.ceil(size / s) <= high
            assert 0 <= first <= s / 2  # the first cell's window starts at or before 0
            assert s * (rows[tap.name] - 1) + first + s / 2 >= size - gap


def test_unknown_tap_is_refused(alexnets, googlenets):
    with pytest.raises(ValueError, match="offers pool1, pool2, fc7"):
        alexnets["caffe"].coord_map("conv5")
    with pytest.raises(ValueError, match="inception_5b"):
        googlenets["caffe"].coord_map("inception_4a")


# --- coord maps against the receptive fields of the real layers ---------------------------


class _Stop(Exception):
    pass


def _linearise(model: nn.Module) -> nn.Module:
    """The same layers made linear with symmetric kernels, so gradients show the field.

    Max pools become average pools of the same geometry, ReLU/LRN/dropout identities,
    every convolution an average over its window. A cell's input gradient is then a sum
    of symmetric profiles around the cell's centre, wherever the field is not clipped.
    """
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MaxPool2d):
                pool = nn.AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode)
                setattr(parent, name, pool)
            elif isinstance(child, (nn.ReLU, nn.LocalResponseNorm, nn.Dropout)):
                setattr(parent, name, nn.Identity())
            elif isinstance(child, nn.Conv2d):
                nn.init.constant_(child.weight, 1.0 / child.weight[0].numel())
                nn.init.zeros_(child.bias)
    return model


def _field_centre(model: nn.Module, module: str, tap: str, rows: int, cell: int) -> float:
    """Centre (row) of the receptive field of row ``cell`` of ``tap``, by backprop."""
    columns = 9 if model.geometry == "caffe" else 33  # few, but enough for one fc6 cell
    image = torch.ones(1, 3, rows, columns, requires_grad=True)
    captured = {}

    def stop(_module, _inputs, output):
        captured[tap] = output
        raise _Stop  # the rest of the net plays no part in this tap

    handle = model.get_submodule(module).register_forward_hook(stop)
    try:
        model(image)
    except _Stop:
        pass
    finally:
        handle.remove()
    captured[tap][0, :, cell].sum().backward()
    profile = image.grad[0].sum(dim=(0, 2)).double()
    assert profile[0] == 0 and profile[-1] == 0, "the field must lie inside the image"
    return float((profile * torch.arange(rows)).sum() / profile.sum())


# (geometry, tap, module the tap is the output of, image rows, cell row)
ALEXNET_FIELDS = [
    ("caffe", "pool1", "pool1", 131, 20),  # field 19 px around 69
    ("caffe", "pool2", "pool2", 131, 10),  # 67 px around 77
    ("caffe", "fc7", "drop7", 400, 6),  # 355 px around 205
    ("aligned", "pool1", "pool1", 131, 8),
    ("aligned", "pool2", "pool2", 131, 4),
    ("aligned", "fc7", "drop7", 400, 6),
]
GOOGLENET_FIELDS = [
    ("caffe", "inception_3b", "inception_3b", 131, 20),  # field 91 px around 69
    ("aligned", "inception_3b", "inception_3b", 131, 8),
    ("aligned", "inception_4e", "inception_4e", 470, 14),  # 427 px around 238
]


@pytest.fixture(scope="module")
def linearised() -> dict[tuple[type, str], nn.Module]:
    return {
        (cls, g): _linearise(cls(geometry=g)).eval()
        for cls in (AlexNet, GoogLeNet)
        for g in GEOMETRIES
    }


@pytest.mark.parametrize(
    "cls, geometry, tap, module, rows, cell",
    [(AlexNet, *case) for case in ALEXNET_FIELDS]
    + [(GoogLeNet, *case) for case in GOOGLENET_FIELDS],
)
def test_coord_map_is_the_receptive_field_centre(
    cls, geometry, tap, module, rows, cell, linearised
):
    model = linearised[cls, geometry]
    centre = model.coord_map(tap)
    assert _field_centre(model, module, tap, rows, cell) == pytest.approx(
        float(centre.scale * cell + centre.shift), abs=1e-3
    )


# --- AlexNet: layer table, order, LRN, dropout --------------------------------------------

# BVLC AlexNet / CaffeNet: (layer, in, out, kernel, groups)
ALEXNET_TABLE = (
    ("conv1", 3, 96, 11, 1),
    ("conv2", 96, 256, 5, 2),
    ("conv3", 256, 384, 3, 1),
    ("conv4", 384, 384, 3, 2),
    ("conv5", 384, 256, 3, 2),
    ("fc6", 256, 4096, 6, 1),
    ("fc7", 4096, 4096, 1, 1),
    ("fc8", 4096, 1000, 1, 1),
)


def test_alexnet_matches_the_bvlc_layer_table(alexnets):
    model = alexnets["caffe"]
    expected = sum(o * (i // g) * k * k + o for _, i, o, k, g in ALEXNET_TABLE)
    assert expected == 60_965_224
    assert sum(p.numel() for p in model.parameters()) == expected
    for name, i, o, k, g in ALEXNET_TABLE:
        layer = getattr(model, name)
        assert layer.groups == g, name
        assert layer.weight.shape == (o, i // g, k, k), name
    assert set(model.state_dict()) == {
        f"{name}.{p}" for name, *_ in ALEXNET_TABLE for p in ("weight", "bias")
    }


def test_alexnet_layer_order_is_the_reference_fcn_alexnet(alexnets):
    """voc-fcn-alexnet/net.py (CaffeNet): each pool before its LRN."""
    assert [name for name, _ in alexnets["caffe"].named_children()] == [
        "conv1", "relu1", "pool1", "norm1", "conv2", "relu2", "pool2", "norm2",
        "conv3", "relu3", "conv4", "relu4", "conv5", "relu5", "pool5",
        "fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8",
    ]  # fmt: skip
    assert alexnets["caffe"].conv1.padding == (100, 100)
    assert alexnets["aligned"].conv1.padding == (9, 9)
    assert alexnets["aligned"].fc6.padding == (3, 3)


def test_lrn_is_caffes_across_channels_formula():
    """Caffe: b_c = a_c / (k + alpha/n * sum of a^2 over channels c-2..c+2) ** beta."""
    torch.manual_seed(1)
    a = 100 * torch.randn(2, 7, 3, 4, dtype=torch.float64)  # large enough for LRN to bite
    padded = nn.functional.pad(a.pow(2), (0, 0, 0, 0, 2, 2))
    window = sum(padded[:, c : c + 7] for c in range(5))
    expected = a / (1 + 1e-4 / 5 * window) ** 0.75
    torch.testing.assert_close(caffe_lrn()(a), expected)


def test_dropout_only_in_training(alexnets):
    model = alexnets["aligned"]
    image = torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        assert torch.equal(model(image)["fc7"], model(image)["fc7"])  # eval
        try:
            model.train()
            assert not torch.equal(model(image)["fc7"], model(image)["fc7"])
        finally:
            model.eval()
    assert isinstance(model.drop6, nn.Dropout) and model.drop7.p == 0.5


def test_torchvision_alexnet_is_refused_clearly():
    weights = {"features.0.weight": torch.zeros(64, 3, 11, 11)}
    with pytest.raises(ValueError, match="one weird trick.*BVLC"):
        load_backbone_weights(AlexNet(), weights, source="torchvision")
    with torch.device("meta"):
        googlenet = GoogLeNet()
    with pytest.raises(ValueError, match="batch norm.*bvlc_googlenet"):
        load_backbone_weights(googlenet, {"conv1.conv.weight": torch.zeros(1)})


# --- GoogLeNet: channel table, Caffe names ------------------------------------------------

# bvlc_googlenet deploy.prototxt: (module, 1x1, 3x3_reduce, 3x3, 5x5_reduce, 5x5, pool_proj)
INCEPTION_TABLE = (
    ("3a", 64, 96, 128, 16, 32, 32),
    ("3b", 128, 128, 192, 32, 96, 64),
    ("4a", 192, 96, 208, 16, 48, 64),
    ("4b", 160, 112, 224, 24, 64, 64),
    ("4c", 128, 128, 256, 24, 64, 64),
    ("4d", 112, 144, 288, 32, 64, 64),
    ("4e", 256, 160, 320, 32, 128, 128),
    ("5a", 256, 160, 320, 32, 128, 128),
    ("5b", 384, 192, 384, 48, 128, 128),
)


def _conv_params(cin: int, cout: int, k: int) -> int:
    return cout * cin * k * k + cout


def test_googlenet_matches_the_bvlc_channel_table():
    model = GoogLeNet(geometry="aligned")
    count = _conv_params(3, 64, 7) + _conv_params(64, 64, 1) + _conv_params(64, 192, 3)
    channels = 192
    for _, c1, c3r, c3, c5r, c5, proj in INCEPTION_TABLE:
        count += _conv_params(channels, c1, 1) + _conv_params(channels, c3r, 1)
        count += _conv_params(c3r, c3, 3) + _conv_params(channels, c5r, 1)
        count += _conv_params(c5r, c5, 5) + _conv_params(channels, proj, 1)
        channels = c1 + c3 + c5 + proj
    assert channels == 1024
    assert sum(p.numel() for p in model.parameters()) == count == 5_973_552
    # loss3/classifier: 1024 -> 1000 adds 1,025,000, BVLC GoogLeNet's 6,998,552 in all
    assert sum(p.numel() for p in GoogLeNet(classifier=True).parameters()) == 6_998_552


def test_googlenet_keys_are_caffe_layer_names(googlenets):
    caffe_layers = {"conv1/7x7_s2", "conv2/3x3_reduce", "conv2/3x3", "loss3/classifier"}
    for name, *_ in INCEPTION_TABLE:
        for layer in ("1x1", "3x3_reduce", "3x3", "5x5_reduce", "5x5", "pool_proj"):
            caffe_layers.add(f"inception_{name}/{layer}")
    keys = googlenets["caffe"].state_dict()
    assert set(keys) == {
        f"{layer.replace('/', '.')}.{p}" for layer in caffe_layers for p in ("weight", "bias")
    }
    assert keys["conv1.7x7_s2.weight"].shape == (64, 3, 7, 7)
    assert keys["inception_5b.pool_proj.weight"].shape == (128, 832, 1, 1)
    assert keys["loss3.classifier.weight"].shape == (1000, 1024, 1, 1)
    assert "loss3.classifier.weight" not in GoogLeNet().state_dict()


def test_inception_branches_are_centred_and_equal_in_size():
    module = Inception(16, 4, 4, 8, 2, 4, 4)
    assert all(geo.trace(module.branch(i)) == geo.IDENTITY for i in range(len(module.BRANCHES)))
    assert module.coord_map() == geo.IDENTITY
    x = torch.randn(1, 16, 7, 9)
    sizes = set()
    for index in range(len(module.BRANCHES)):
        y = x
        for layer in module.branch(index):
            y = layer(y)
        sizes.add(tuple(y.shape[2:]))
    assert sizes == {(7, 9)}
    assert module(x).shape == (1, module.out_channels, 7, 9)


def test_googlenet_caffe_and_aligned_pads(googlenets):
    assert googlenets["caffe"].conv1.get_submodule("7x7_s2").padding == (100, 100)
    assert googlenets["aligned"].conv1.get_submodule("7x7_s2").padding == (3, 3)
    assert GoogLeNet(in_channels=4).conv1.get_submodule("7x7_s2").weight.shape[1] == 4


# --- the ImageNet classifier at every stride-32 cell --------------------------------------


@pytest.mark.parametrize("name", ["alexnet", "googlenet"])
def test_classify_scores_every_stride32_cell(name, alexnets, googlenets):
    model = (alexnets if name == "alexnet" else googlenets)["aligned"]
    image = torch.randn(2, 3, 33, 67)
    with torch.no_grad():
        scores = model.classify(image)
        last = model(image)[model.taps[-1].name]
    assert scores.shape == (2, 1000, *last.shape[2:])
    assert model.classifier is getattr(model, model.classifier_name)


def test_classify_without_classifier_says_how_to_fix():
    with pytest.raises(RuntimeError, match="classifier=True"):
        GoogLeNet(geometry="aligned").classify(torch.randn(1, 3, 33, 33))
