"""Crop offsets derived from layer geometry reproduce the reference nets' Crop layers."""

from fractions import Fraction

import pytest
from torch import nn

from fcnseg import build_model
from fcnseg.models import geometry as geo

# The reference prototxts crop at these offsets (voc-fcn32s/16s/8s, voc-fcn-alexnet).
REFERENCE_OFFSETS = {
    "fcn32s_vgg16": {"score": 19},
    "fcn16s_vgg16": {"score_pool4c": 5, "score": 27},
    "fcn8s_vgg16": {"score_pool4c": 5, "score_pool3c": 9, "score": 31},
    "fcn8s_atonce_vgg16": {"score_pool4c": 5, "score_pool3c": 9, "score": 31},
}


@pytest.mark.parametrize("name", sorted(REFERENCE_OFFSETS))
def test_caffe_geometry_derives_reference_offsets(name):
    model = build_model(name, num_classes=21, geometry="caffe")
    assert model.head.crop_offsets() == REFERENCE_OFFSETS[name]


def test_reference_kernel_sizes_are_chosen():
    head = build_model("fcn8s_vgg16", num_classes=21).head
    assert head.upscore2.weight.shape[-1] == 4
    assert head.upscore_pool4.weight.shape[-1] == 4
    assert head.upscore8.weight.shape[-1] == 16
    assert build_model("fcn32s_vgg16", num_classes=21).head.upscore.weight.shape[-1] == 64
    assert build_model("fcn16s_vgg16", num_classes=21).head.upscore16.weight.shape[-1] == 32


def test_conv_map_by_hand():
    # 3x3 conv with pad 100: x_in = x_out + 1 - 100
    assert geo.conv_map(3, padding=100) == geo.CoordMap(Fraction(1), Fraction(-99))
    # 2x2 stride-2 pool: cell i covers pixels 2i and 2i + 1, centre 2i + 1/2
    assert geo.conv_map(2, 2) == geo.CoordMap(Fraction(2), Fraction(1, 2))
    # dilation d spreads a k kernel over d (k - 1) + 1 pixels
    assert geo.conv_map(3, dilation=4, padding=4) == geo.CoordMap(Fraction(1), Fraction(0))


def test_deconv_inverts_conv():
    for kernel, stride, pad in [(64, 32, 0), (4, 2, 1), (63, 32, 0)]:
        forward = geo.conv_map(kernel, stride, pad)
        assert forward.compose(geo.deconv_map(kernel, stride, pad)) == geo.IDENTITY


def test_trace_reads_modules():
    layers = [nn.Conv2d(3, 4, 3, padding=100), nn.ReLU(), nn.MaxPool2d(2, 2, ceil_mode=True)]
    assert geo.trace(layers) == geo.CoordMap(Fraction(2), Fraction(-197, 2))


def test_crop_offset_refuses_misaligned_maps():
    with pytest.raises(ValueError, match="fraction of a cell"):
        geo.crop_offset(geo.CoordMap(Fraction(1), Fraction(1, 2)), geo.IDENTITY)
    with pytest.raises(ValueError, match="different stride"):
        geo.crop_offset(geo.CoordMap(Fraction(2), Fraction(0)), geo.IDENTITY)
