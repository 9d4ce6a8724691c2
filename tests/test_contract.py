"""The contract every registered model keeps (any input size, logits at input size)."""

import io

import pytest
import torch
from torch import nn

import fcnseg
from fcnseg.models.backbones import BACKBONES, GEOMETRIES

MODELS = fcnseg.list_models()


def _randomise_scores(model: nn.Module) -> None:
    """Score layers start at zero; random ones make outputs depend on the input."""
    for module in model.head.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, std=0.01)
            nn.init.normal_(module.bias, std=0.01)


def _input(model: nn.Module, batch: int, height: int, width: int) -> torch.Tensor:
    """Random input with the channels the model reads (RGB 3; RGB-D 4; RGB-HHA stacked 6)."""
    return torch.randn(batch, getattr(model, "in_channels", 3), height, width)


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    torch.manual_seed(0)
    built = fcnseg.build_model(request.param, num_classes=5)
    _randomise_scores(built)
    return built


def test_registry_names_the_paper_nets():
    for name in ("fcn32s_vgg16", "fcn16s_vgg16", "fcn8s_vgg16", "fcn8s_atonce_vgg16"):
        assert name in MODELS


def test_unknown_model_suggests_close_names():
    with pytest.raises(ValueError, match="did you mean fcn8s_vgg16"):
        fcnseg.build_model("fcn8s_vgg", num_classes=21)


def test_output_size_equals_input_size(model):
    model.eval()
    with torch.no_grad():
        for size in [(1, 1), (97, 131), (375, 500)]:
            out = model(_input(model, 1, *size))
            assert out.shape == (1, 5, *size), f"{model.name} at {size}"


def test_backward_reaches_backbone_and_head(model):
    model.train()
    model.zero_grad()
    out = model(_input(model, 2, 97, 131))
    assert out.shape == (2, 5, 97, 131)
    out.square().mean().backward()
    first = next(p for p in model.backbone.parameters() if p.requires_grad)
    assert first.grad is not None and first.grad.abs().sum() > 0
    # score_fr, or one per stream in a late-fusion head (score_frcolor, score_frhha)
    score_fr = [m for n, m in model.head.named_children() if n.startswith("score_fr")]
    assert score_fr and all(m.weight.grad.abs().sum() > 0 for m in score_fr)
    fixed = [p for p in model.head.parameters() if not p.requires_grad]
    assert all(p.grad is None for p in fixed), "fixed deconvolutions must not learn"


def test_eval_is_deterministic_and_state_dict_round_trips(model):
    model.eval()
    x = _input(model, 1, 97, 131)
    with torch.no_grad():
        first, second = model(x), model(x)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)
    clone = fcnseg.build_model(model.name, num_classes=5).eval()
    clone.load_state_dict(torch.load(buffer, weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(clone(x), first, rtol=0, atol=0)


def test_parameter_names_keep_the_paper_layer_names():
    keys = fcnseg.build_model("fcn8s_vgg16", num_classes=21).state_dict().keys()
    for key in (
        "backbone.conv1_1.weight",
        "backbone.fc6.weight",
        "backbone.fc7.bias",
        "head.score_fr.weight",
        "head.upscore2.weight",
        "head.score_pool4.weight",
        "head.upscore_pool4.weight",
        "head.score_pool3.bias",
        "head.upscore8.weight",
    ):
        assert key in keys
    atonce = fcnseg.build_model("fcn8s_atonce_vgg16", num_classes=21).head
    assert atonce.scale_pool4.weight.unique().tolist() == [pytest.approx(0.01)]
    assert atonce.scale_pool3.weight.unique().tolist() == [pytest.approx(0.0001)]


def test_score_layers_start_at_zero():
    head = fcnseg.build_model("fcn8s_vgg16", num_classes=21).head
    for name in ("score_fr", "score_pool4", "score_pool3"):
        layer = getattr(head, name)
        assert layer.weight.abs().sum() == 0 and layer.bias.abs().sum() == 0


def test_bilinear_upsampling_mode_and_learnable_deconvolution():
    bilinear = fcnseg.build_model("fcn8s_vgg16", num_classes=3, upsample="bilinear")
    assert not any("upscore" in key for key in bilinear.state_dict())
    _randomise_scores(bilinear)
    assert bilinear.eval()(torch.randn(1, 3, 41, 53)).shape == (1, 3, 41, 53)
    learnable = fcnseg.build_model("fcn8s_vgg16", num_classes=3, learnable_upsample=True)
    assert learnable.head.upscore8.weight.requires_grad


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_feature_taps_match_the_declaration(name, geometry):
    backbone = BACKBONES[name](geometry=geometry).eval()
    height, width = 97, 131
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, height, width))
    assert list(features) == [tap.name for tap in backbone.taps]
    for tap in backbone.taps:
        feature = features[tap.name]
        assert feature.shape[1] == tap.channels, f"{name}.{tap.name} channels"
        assert backbone.coord_map(tap.name).scale == tap.stride, f"{name}.{tap.name} stride"
        if geometry == "aligned":  # about one cell per stride: no giant zero border
            cells = torch.tensor(feature.shape[-2:], dtype=torch.float64)
            ideal = torch.tensor([height / tap.stride, width / tap.stride], dtype=torch.float64)
            assert (cells - ideal).abs().max() <= 1, f"{name}.{tap.name} size"
