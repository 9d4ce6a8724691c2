"""fcnseg weights files (torch and safetensors), and the ``weights`` and ``export`` commands."""

from __future__ import annotations

import dataclasses
import re
import struct

import numpy as np
import pytest
import torch

import fcnseg
from fcnseg import load_weights, save_weights
from fcnseg.cli import main
from fcnseg.fileio import atomic_write
from fcnseg.modelfile import read_record
from fcnseg.models import InputSpec
from fcnseg.models.normalization import IMAGENET, Normalization

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- a tiny .caffemodel


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def message(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def caffe_blob(array: np.ndarray) -> bytes:
    """BlobProto: shape = 7 (BlobShape, dim = 1 packed), data = 5 (packed float)."""
    shape = message(1, b"".join(varint(d) for d in array.shape))
    data = struct.pack(f"<{array.size}f", *array.reshape(-1).tolist())
    return message(7, shape) + message(5, data)


def caffe_layer(name: str, kind: str, blobs: list[np.ndarray]) -> bytes:
    """LayerParameter: name = 1, type = 2, blobs = 7; inside NetParameter.layer = 100."""
    body = message(1, name.encode()) + message(2, kind.encode())
    return message(100, body + b"".join(message(7, caffe_blob(b)) for b in blobs))


@pytest.fixture
def googlenet_caffemodel(tmp_path):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((64, 3, 7, 7)).astype(np.float32)
    bias = rng.standard_normal(64).astype(np.float32)
    classifier = rng.standard_normal((1000, 1024)).astype(np.float32)
    path = tmp_path / "bvlc_googlenet.caffemodel"
    path.write_bytes(
        message(1, b"GoogleNet")
        + caffe_layer("data", "Input", [])
        + caffe_layer("conv1/7x7_s2", "Convolution", [weight, bias])
        + caffe_layer("loss3/classifier", "InnerProduct", [classifier, np.zeros(1000, np.float32)])
    )
    return path, weight, bias


# ----------------------------------------------------------------------------- weights files


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_save_and_load_weights_round_trip(tmp_path, suffix: str) -> None:
    model = fcnseg.build_model("fcn8s_efficientnet_lite0", num_classes=4)
    with torch.no_grad():
        model.head.score_fr.weight.normal_()
    custom = Normalization(mean=(1.0, 2.0, 3.0), std=(4.0, 5.0, 6.0), bgr=True, input_range=1.0)
    model.spec = dataclasses.replace(model.spec, inputs=(InputSpec("image", 3, custom),))
    path = save_weights(tmp_path / f"w{suffix}", model)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left
    found = read_record(path).spec
    assert (found.name, found.num_classes, found.inputs[0].normalization) == (model.name, 4, custom)
    loaded = load_weights(path)
    assert loaded.name == model.name and loaded.normalization == custom
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.raises(ValueError, match="records model 'fcn8s_efficientnet_lite0', not 'x'"):
        load_weights(path, model="x")


def test_bare_state_dicts_need_the_model(tmp_path) -> None:
    model = fcnseg.build_model("fcn32s_efficientnet_lite0", num_classes=2)
    path = tmp_path / "bare.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(
        ValueError, match=r"bare\.pth: a bare state dict .*\(--model, --num-classes\)"
    ):
        load_weights(path)
    loaded = load_weights(path, model="fcn32s_efficientnet_lite0", num_classes=2)
    assert torch.equal(loaded.head.score_fr.bias, model.head.score_fr.bias)


def test_training_checkpoints_rebuild_with_their_options(tmp_path) -> None:
    """The training checkpoint layout (training/checkpoint.py): model name, class count and
    build options under "model"; a non-default geometry must come back."""
    model = fcnseg.build_model("fcn32s_efficientnet_lite0", num_classes=2, geometry="caffe")
    torch.save(
        {
            "format": "fcnseg.checkpoint",
            "model": {
                "name": model.name,
                "num_classes": 2,
                "options": {"geometry": "caffe"},
            },
            "classes": ["a", "b"],
            "normalization": {"mean": [1.0] * 3, "std": [2.0] * 3, "bgr": False},
            "state_dict": model.state_dict(),
        },
        tmp_path / "best.pt",
    )
    loaded = load_weights(tmp_path / "best.pt")
    assert loaded.backbone.geometry == "caffe" and loaded.num_classes == 2
    assert loaded.normalization.mean == (1.0, 1.0, 1.0)


def test_unreadable_files_name_the_file(tmp_path) -> None:
    for name in ("junk.pt", "junk.safetensors"):
        (tmp_path / name).write_bytes(b"\x00not weights at all")
        pattern = name.replace(".", r"\.") + "(: not a readable| is damaged)"
        with pytest.raises(ValueError, match=pattern):
            read_record(tmp_path / name)
    torch.save({"epoch": 3}, tmp_path / "meta.pt")
    with pytest.raises(ValueError, match=r"meta\.pt is not an fcnseg model file"):
        read_record(tmp_path / "meta.pt")


def test_atomic_write_leaves_the_old_file_on_failure(tmp_path) -> None:
    target = tmp_path / "out.pt"
    target.write_bytes(b"old")

    def fail(temporary):
        temporary.write_bytes(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.pt"]
    with pytest.raises(FileNotFoundError, match="does not exist; create it"):
        atomic_write(tmp_path / "missing" / "out.pt", fail)


# ----------------------------------------------------------------------------- fcnseg weights


def test_inspect_state_dicts_and_caffemodels(tmp_path, capsys, googlenet_caffemodel) -> None:
    model = fcnseg.build_model("fcn32s_efficientnet_lite0", num_classes=3)
    save_weights(tmp_path / "m.safetensors", model)
    assert main(["weights", "inspect", str(tmp_path / "m.safetensors"), "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert "fcnseg model file of fcn32s_efficientnet_lite0 (classes: semantic 3)" in out
    assert re.search(r"\nbackbone\._blocks\.0\._bn1\.bias +32 +torch\.float32\n", out)
    assert "... and 295 more" in out  # listed by name: safetensors headers are sorted
    torch.save(
        {"conv1.weight": torch.zeros(64, 3, 7, 7), "layer1.0.conv1.weight": torch.zeros(1)},
        tmp_path / "r.pth",
    )
    assert main(["weights", "inspect", str(tmp_path / "r.pth")]) == 0
    out = capsys.readouterr().out
    assert "2 tensors, 9,409 values; torchvision/timm resnet" in out
    path, _, _ = googlenet_caffemodel
    assert main(["weights", "inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "GoogleNet net, 3 layers (V2)" in out and "conv1/7x7_s2" in out and "64x3x7x7, 64" in out
    assert main(["weights", "inspect", str(tmp_path / "absent.pt")]) == 2
    assert "absent.pt not found: check the path" in capsys.readouterr().err


def test_convert_caffe(tmp_path, capsys, googlenet_caffemodel) -> None:
    path, weight, bias = googlenet_caffemodel
    out = tmp_path / "fcn32s_googlenet.pt"
    argv = ["weights", "convert", "caffe", str(path), "--model", "fcn32s_googlenet"]
    assert main([*argv, "--num-classes", "5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "copied   2" in printed
    assert "dropped 2: loss3.classifier.weight, loss3.classifier.bias" in printed
    assert "left as initialised 115: backbone.conv2.3x3_reduce.weight" in printed
    assert "wrote" in printed and "BGR 0..255, mean (104.00699, 116.66877, 122.67892)" in printed
    model = load_weights(out)
    assert model.name == "fcn32s_googlenet" and model.num_classes == 5
    conv = model.backbone.get_submodule("conv1.7x7_s2")
    assert torch.equal(conv.weight, torch.from_numpy(weight))
    assert torch.equal(conv.bias, torch.from_numpy(bias))
    wrong = ["weights", "convert", "caffe", str(path), "--model", "fcn32s_resnet18"]
    assert main([*wrong, "--num-classes", "5", "--out", str(tmp_path / "x.pt")]) == 2
    assert "no layer name matches a layer of fcn32s_resnet18" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.slow
@pytest.mark.onnx
def test_convert_torchvision_and_export_onnx(tmp_path, capsys) -> None:
    # the backbone's own (He) initialisation, saved as a torchvision file would hold it
    state = fcnseg.build_model("fcn32s_resnet18", num_classes=2).backbone.state_dict()
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    torch.save(state, tmp_path / "resnet18.pth")
    out = tmp_path / "fcn32s_resnet18.safetensors"
    argv = ["weights", "convert", "torchvision", str(tmp_path / "resnet18.pth")]
    assert main([*argv, "--model", "fcn32s_resnet18", "--num-classes", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "dropped 2: fc.weight, fc.bias" in printed
    assert (
        "left as initialised 3: head.score_fr.weight, head.score_fr.bias, head.upscore" in printed
    )
    model = load_weights(out)
    assert torch.equal(model.backbone.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert model.normalization == IMAGENET
    wrong = ["weights", "convert", "timm", str(tmp_path / "resnet18.pth"), "--model"]
    before = out.read_bytes()
    assert main([*wrong, "fcn32s_efficientnet_lite0", "--num-classes", "2", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "resnet18.pth: these are torchvision/timm resnet weights" in error
    assert "build a model with a ResNet backbone" in error
    assert out.read_bytes() == before  # a failed conversion writes nothing

    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    onnx_path = tmp_path / "m.onnx"
    export = ["export", "onnx", "--checkpoint", str(out), "--out", str(onnx_path)]
    assert main([*export, "--example-size", "64", "64"]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "fcn32s_resnet18 (inputs image 3; classes semantic 2)" in printed
    # converted backbone weights leave the score layers at zero: the check says it proves nothing
    assert len(re.findall(r"onnxruntime vs PyTorch at \d+x\d+: proves nothing", printed)) == 2
    assert onnx_path.is_file()


@pytest.mark.slow
@pytest.mark.onnx
def test_export_bare_state_dict_needs_the_model(tmp_path, capsys) -> None:
    model = fcnseg.build_model("fcn32s_efficientnet_lite0", num_classes=2)
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    argv = ["export", "onnx", "--checkpoint", str(tmp_path / "bare.pt"), "--out"]
    assert main([*argv, str(tmp_path / "m.onnx")]) == 2
    assert "pass the model name and the class count" in capsys.readouterr().err
    named = [*argv, str(tmp_path / "m.onnx"), "--model", "fcn32s_efficientnet_lite0"]
    assert main([*named, "--num-classes", "2", "--example-size", "64", "64", "--no-check"]) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "m.onnx").is_file()
