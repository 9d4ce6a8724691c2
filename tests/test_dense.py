"""Shift-and-stitch equals filter rarefaction (Section 3.2), under the stated conventions."""

import pytest
import torch
from slim_models import fcn_on
from torch import nn

import fcnseg
from fcnseg.dense import CoarseScores, output_stride_of, rarefy, shift_and_stitch
from fcnseg.models.backbones import VGG16

SLIM = {"widths": (4, 8, 16, 16, 16), "fc_channels": 8}  # VGG16's geometry, few channels
VGG16_RECEPTIVE_FIELD = 404  # pool5 sees 212 pixels; fc6's 7 x 7 at stride 32 adds 6 * 32


def _unpadded_net() -> nn.Sequential:
    """Stride 8, no zero padding; ceil-mode pools whose last windows run over the edge."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2, 2, ceil_mode=True),
        nn.Conv2d(4, 6, 3), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(6, 6, 3, stride=2), nn.ReLU(), nn.Conv2d(6, 5, 3),
    ).eval()  # fmt: skip


@pytest.mark.parametrize("size", [(45, 53), (61, 44), (70, 70)])
@pytest.mark.parametrize("factor", [8, 4, 2])
def test_unpadded_net_is_exact_on_every_cell(size, factor):
    net = _unpadded_net()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        stitched = shift_and_stitch(net, x, factor)
        rarefied = rarefy(net, 8 // factor)(x)
    h, w = stitched.shape[-2:]
    assert rarefied.shape[-2] >= h and rarefied.shape[-1] >= w
    torch.testing.assert_close(stitched, rarefied[..., :h, :w], rtol=0, atol=1e-5)


def _interior(stitched, step, offset, size, factor):
    """Cells whose receptive field lies inside every shifted copy's extent."""
    lo, hi = (factor - 1) * step, size
    half = (VGG16_RECEPTIVE_FIELD - 1) / 2
    slices = []
    for axis in (0, 1):
        cells = [
            q
            for q in range(stitched.shape[-2 + axis])
            if step * q + offset - half >= lo and step * q + offset + half <= hi[axis] - 1
        ]
        assert len(cells) >= 3, "input too small to have an interior"
        slices.append(slice(cells[0], cells[-1] + 1))
    return (..., slices[0], slices[1])


def _check_interior(net, size, factor, offset):
    x = torch.randn(1, 3, *size)
    step = output_stride_of(net) // factor
    with torch.no_grad():
        stitched = shift_and_stitch(net, x, factor)
        rarefied = rarefy(net, step)(x)
    if isinstance(rarefied, dict):  # a backbone's taps: the last is the densified one
        rarefied = rarefied[net.taps[-1].name]
    region = _interior(stitched, step, offset, size, factor)
    h, w = stitched.shape[-2:]
    torch.testing.assert_close(
        stitched[region], rarefied[..., :h, :w][region], rtol=1e-5, atol=1e-6
    )
    return stitched, rarefied


@pytest.mark.slow
@pytest.mark.parametrize("size", [(457, 473), (489, 461)])
def test_vgg16_equal_in_the_interior(size):
    """Zero padding (pad 1 everywhere) makes the border differ; the interior is exact."""
    torch.manual_seed(0)
    backbone = VGG16(geometry="aligned", **SLIM).eval()
    offset = float(backbone.coord_map("fc7").shift)
    stitched, rarefied = _check_interior(backbone, size, 4, offset)
    rarefied = rarefied[..., : stitched.shape[-2], : stitched.shape[-1]]
    border = (..., slice(0, 8), slice(0, 8))  # copies shifted by 8..24 px pad their own border
    assert not torch.allclose(stitched[border], rarefied[border], rtol=1e-5, atol=1e-6), (
        "the border should differ: the test region would be meaningless otherwise"
    )


@pytest.mark.slow
@pytest.mark.parametrize("size", [(455, 461)])
def test_fcn32s_coarse_scores_equal_in_the_interior(size):
    """FCN-32s without its upsampling, in the reference's caffe geometry (pad 100)."""
    torch.manual_seed(0)
    backbone = VGG16(geometry="caffe", **SLIM)
    model = fcn_on(backbone, 5, "32s").eval()
    nn.init.normal_(model.head.score_fr.weight)
    coarse = CoarseScores(model)
    assert not coarse.backbone.training, "the FCN's eval mode carries over"
    _check_interior(coarse, size, 4, float(backbone.coord_map("fc7").shift))


def test_rarefied_backbone_reports_its_new_geometry():
    backbone = VGG16(geometry="caffe", **SLIM)
    rarefied = rarefy(backbone, 8)
    assert [tap.stride for tap in rarefied.taps] == [8, 8, 8]
    for tap in ("pool3", "pool4", "fc7"):
        before, after = backbone.coord_map(tap), rarefied.coord_map(tap)
        assert after.scale == min(before.scale, 8) and after.shift == before.shift
    assert rarefied.fc6.dilation == (4, 4) and rarefied.conv5_1.dilation == (2, 2)
    assert backbone.fc6.dilation == (1, 1), "rarefy must not touch the original"


def test_batched_copies_agree_away_from_the_cropped_edge():
    """Batching crops the copies to a common extent: only cells near that edge change."""
    net = _unpadded_net()
    x = torch.randn(1, 3, 47, 51)
    with torch.no_grad():
        exact = shift_and_stitch(net, x, 4)
        batched = shift_and_stitch(net, x, 4, batch_size=16)
        assert shift_and_stitch(net, x, 4, batch_size=4).shape == batched.shape
    # receptive field 36 px; copies keep 47 - 3 * 2 = 41 rows: windows of cells q < 3 fit
    torch.testing.assert_close(batched[..., :3, :3], exact[..., :3, :3], rtol=0, atol=1e-6)
    assert batched.shape[-2] <= exact.shape[-2]


def test_bad_arguments_get_clear_errors():
    net = _unpadded_net()
    with pytest.raises(ValueError, match="divide the net's output stride 8"):
        shift_and_stitch(net, torch.randn(1, 3, 40, 40), 3)
    with pytest.raises(ValueError, match="too small"):
        shift_and_stitch(net, torch.randn(1, 3, 7, 40), 8)
    model = fcnseg.build_model("fcn32s_resnet18", num_classes=2)
    with pytest.raises(TypeError, match="CoarseScores"):
        shift_and_stitch(model, torch.randn(1, 3, 64, 64), 2)
    with pytest.raises(TypeError, match="output_stride=8"):
        rarefy(model, 8)
    with pytest.raises(ValueError, match="power of two"):
        rarefy(net, 6)
    with pytest.raises(ValueError, match="average pooling"):
        pooled = nn.Sequential(
            nn.Conv2d(3, 2, 3), nn.AvgPool2d(2), nn.AvgPool2d(2), nn.Conv2d(2, 2, 3)
        )
        rarefy(pooled, 1)
    with pytest.raises(ValueError, match="output_stride = 4 is not allowed: choose one of 8, 16, 32"):
        fcnseg.build_model("fcn8s_resnet18", num_classes=2, output_stride=4)


@pytest.mark.parametrize(
    "name", [pytest.param("fcn8s_vgg16", marks=pytest.mark.slow), "fcn16s_alexnet", "fcn8s_resnet18"]
)
@pytest.mark.parametrize("output_stride", [16, 8])
def test_output_stride_models_keep_the_contract(name, output_stride):
    model = fcnseg.build_model(name, num_classes=3, output_stride=output_stride).eval()
    for module in model.head.children():
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, std=0.01)
    assert model.backbone.output_stride == output_stride
    assert model.head.score_stride == min(output_stride, 32 >> len(model.head.skips))
    with torch.no_grad():
        for size in [(1, 1), (97, 131)]:
            assert model(torch.randn(1, 3, *size)).shape == (1, 3, *size)
