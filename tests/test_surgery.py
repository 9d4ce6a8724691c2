"""Net surgery: convolutionalization (Section 3.1), bilinear upsampling (3.3), transplant."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fcnseg import build_model
from fcnseg.models.backbones import VGG16
from fcnseg.models.backbones.vgg import TORCHVISION_VGG16_KEYS
from fcnseg.models.upsample import Upsample
from fcnseg.surgery import (
    bilinear_kernel,
    convolutionalize,
    expand_score,
    fc_to_conv,
    transplant,
)
from fcnseg.weights import load_backbone_weights


def _unpadded_classifier() -> nn.Sequential:
    """A classifier with no zero padding inside: input 22 -> features 16 x 4 x 4, stride 4."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Dropout(), nn.Linear(32, 10),
    ).eval()  # fmt: skip


def test_fc_to_conv_reshapes_weights():
    linear = nn.Linear(2 * 3 * 3, 5)
    conv = fc_to_conv(linear, 2, 3)
    x = torch.randn(4, 2, 3, 3)
    torch.testing.assert_close(conv(x).flatten(1), linear(x.flatten(1)))
    with pytest.raises(ValueError, match="18 features"):
        fc_to_conv(linear, 2, 4)


def test_convolutionalized_equals_classifier_on_its_input_size():
    classifier = _unpadded_classifier()
    fcn = convolutionalize(classifier, (22, 22)).eval()
    x = torch.randn(2, 3, 22, 22)
    out = fcn(x)
    assert out.shape == (2, 10, 1, 1)
    torch.testing.assert_close(out.flatten(1), classifier(x), rtol=0, atol=1e-6)


def test_every_cell_is_the_classifier_on_its_window():
    """The paper's claim, exact: cell (i, j) = classifier(window at (4i, 4j)), corners too."""
    classifier = _unpadded_classifier()
    fcn = convolutionalize(classifier, (22, 22)).eval()
    x = torch.randn(1, 3, 22 + 4 * 5, 22 + 4 * 7)
    out = fcn(x)
    assert out.shape == (1, 10, 6, 8)
    windows = [(i, j) for i in range(6) for j in range(8)]
    crops = torch.cat([x[..., 4 * i : 4 * i + 22, 4 * j : 4 * j + 22] for i, j in windows])
    expected = classifier(crops)
    got = torch.stack([out[0, :, i, j] for i, j in windows])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def _torchvision_style_vgg16() -> nn.Sequential:
    """VGG16 as torchvision lays it out: features, 7x7 adaptive pool, three Linear layers."""
    layers: list[nn.Module] = []
    channels = 3
    for width, convs in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)):
        for _ in range(convs):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
            channels = width
        layers.append(nn.MaxPool2d(2, 2))
    head = [nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 4096),
            nn.ReLU(), nn.Dropout(), nn.Linear(4096, 1000)]  # fmt: skip
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(7), nn.Flatten(), *head).eval()


def _torchvision_keys(classifier: nn.Sequential) -> dict[str, torch.Tensor]:
    """The Sequential's tensors under torchvision's vgg16 key names."""
    keys = {}
    features = [i for i, m in enumerate(classifier) if isinstance(m, nn.Conv2d)]
    linears = [i for i, m in enumerate(classifier) if isinstance(m, nn.Linear)]
    for index, position in enumerate(features):
        keys[f"features.{list(TORCHVISION_VGG16_KEYS)[index].split('.')[1]}"] = position
    for key, position in zip(
        ("classifier.0", "classifier.3", "classifier.6"), linears, strict=True
    ):
        keys[key] = position
    return {
        f"{key}.{param}": getattr(classifier[position], param)
        for key, position in keys.items()
        for param in ("weight", "bias")
    }


@pytest.fixture(scope="module")
def vgg16_classifier():
    torch.manual_seed(0)
    return _torchvision_style_vgg16()


def test_vgg16_convolutionalized_at_224(vgg16_classifier):
    fcn = convolutionalize(vgg16_classifier, (224, 224)).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(fcn(x).flatten(1), vgg16_classifier(x), rtol=1e-4, atol=1e-5)


def test_vgg16_padding_moves_interior_cells(vgg16_classifier):
    """On a larger input, VGG16's 1-pixel zero padding makes windows differ at their border.

    At 288 x 288 (a 3 x 3 score map, stride 32) the centre cell's logits differ from the
    classifier's on the same 224 x 224 window by 0.7% of their norm (measured with these
    default-initialised weights, seed 0; printed with -s). It comes only from zero padding:
    on the crop every layer pads the window's border with zeros where the larger image has
    real pixels, and the difference spreads inward layer by layer. Without interior padding
    the equality is exact (test_every_cell_is_the_classifier_on_its_window).
    """
    fcn = convolutionalize(vgg16_classifier, (224, 224)).eval()
    x = torch.randn(1, 3, 288, 288)
    with torch.no_grad():
        centre = fcn(x)[0, :, 1, 1]
        window = vgg16_classifier(x[..., 32:256, 32:256])[0]
    relative = ((centre - window).norm() / window.norm()).item()
    print(f"VGG16 centre cell vs window: relative difference {relative:.3f}")
    assert 1e-4 < relative < 0.05


def test_vgg16_loads_torchvision_weights(vgg16_classifier):
    """A torchvision state dict loads with fc6/fc7 reshaped into convolutions.

    In aligned geometry fc6 pads by 3, so at 224 x 224 the centre cell of the 7 x 7 map
    reads exactly the 7 x 7 features the Linear fc6 reads: it must give the logits.
    """
    backbone = VGG16(geometry="aligned", classifier=True).eval()
    report = load_backbone_weights(
        backbone, _torchvision_keys(vgg16_classifier), source="torchvision"
    )
    assert set(report.coerced) == {"fc6.weight", "fc7.weight", "fc8.weight"}
    assert not report.missing and not report.dropped
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        logits = backbone.classify(x)[0, :, 3, 3]
        torch.testing.assert_close(logits, vgg16_classifier(x)[0], rtol=1e-4, atol=1e-5)


def test_load_torchvision_file_errors(tmp_path, vgg16_classifier):
    backbone = VGG16(geometry="aligned")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_backbone_weights(backbone, tmp_path / "missing.pth", source="torchvision")
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="broken.pth is damaged, truncated or not a PyTorch file"):
        load_backbone_weights(backbone, broken, source="torchvision")
    weights = _torchvision_keys(vgg16_classifier)
    weights["features.0.weight"] = torch.zeros(64, 3, 5, 5)
    with pytest.raises(ValueError, match=r"'conv1_1.weight'.*\(64, 3, 5, 5\).*\(64, 3, 3, 3\)"):
        load_backbone_weights(backbone, weights, source="torchvision")
    weights["features.0.weight"] = torch.zeros(64, 3, 3, 3)
    del weights["features.2.weight"]
    with pytest.raises(KeyError, match="missing from the weights: conv1_2.weight"):
        load_backbone_weights(backbone, weights, source="torchvision")


def test_bilinear_kernel_reference_values():
    # upsample_filt(4): factor 2, centre 1.5 -> ramp (0.25, 0.75, 0.75, 0.25)
    ramp = torch.tensor([0.25, 0.75, 0.75, 0.25])
    torch.testing.assert_close(bilinear_kernel(4), torch.outer(ramp, ramp))
    # odd size 3: factor 2, centre 1 -> (0.5, 1, 0.5)
    torch.testing.assert_close(bilinear_kernel(3)[1], torch.tensor([0.5, 1.0, 0.5]))


@pytest.mark.parametrize("factor", [2, 8, 32])
def test_bilinear_deconv_equals_interpolation(factor):
    """Kernel 2f, stride f, cropped at f/2 = bilinear interpolation (align_corners=False)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 9)
    up = Upsample(3, factor)
    assert up.weight.shape == (3, 3, 2 * factor, 2 * factor) and not up.weight.requires_grad
    out = up(x)[..., factor // 2 :, factor // 2 :]
    reference = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    h, w = reference.shape[-2:]
    inner = (slice(None), slice(None), slice(factor, h - factor), slice(factor, w - factor))
    torch.testing.assert_close(out[..., :h, :w][inner], reference[inner], rtol=0, atol=1e-5)


def test_transplant_reports_and_refuses():
    src = nn.Sequential(nn.Linear(12, 4), nn.Linear(4, 2))
    dst = nn.Sequential(nn.Conv2d(3, 4, 2))  # 4 x 3 x 2 x 2 = 48 = 4 x 12
    report = transplant(dst, src)
    assert report.coerced == ["0.weight"] and report.copied == ["0.bias"]
    assert report.dropped == ["1.weight", "1.bias"] and report.missing == []
    torch.testing.assert_close(dst[0].weight.flatten(1), src[0].weight)
    with pytest.raises(ValueError, match=r"'0.weight'.*\(5, 12\).*\(4, 3, 2, 2\)"):
        transplant(dst, {"0.weight": torch.zeros(5, 12)})
    with pytest.raises(KeyError, match="missing from the weights: 0.bias"):
        transplant(dst, {"0.weight": torch.zeros(4, 12)}, strict=True)


def test_expand_score_keeps_first_classes():
    model = build_model("fcn8s_vgg16", num_classes=21, geometry="aligned")
    torch.manual_seed(0)
    for name in ("score_fr", "score_pool4", "score_pool3"):
        nn.init.normal_(getattr(model.head, name).weight)
    before = {k: v.clone() for k, v in model.head.state_dict().items()}
    expand_score(model, 60)
    after = model.head.state_dict()
    for key in ("score_fr.weight", "score_pool4.bias", "score_pool3.weight"):
        assert after[key].shape[0] == 60
        torch.testing.assert_close(after[key][:21], before[key])
        assert after[key][21:].abs().sum() == 0
    torch.testing.assert_close(after["upscore8.weight"][:21, :21], before["upscore8.weight"])
    torch.testing.assert_close(after["upscore8.weight"][40, 40], bilinear_kernel(16))
    assert model(torch.randn(1, 3, 33, 47)).shape == (1, 60, 33, 47)
    expand_score(model, 5)
    torch.testing.assert_close(model.head.score_fr.weight, before["score_fr.weight"][:5])
