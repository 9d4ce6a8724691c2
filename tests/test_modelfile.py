"""fcnseg's one file format (``fcnseg.modelfile``): training checkpoints, .pt and
.safetensors weights round-trip, writes are atomic, bad files are refused in one line."""

import dataclasses
import os
import random

import numpy as np
import pytest
import torch

import fcnseg
from fcnseg import build_model, modelfile
from fcnseg.data import SYNTHETIC_CLASSES, voc_palette
from fcnseg.fileio import FileFormatError, atomic_write
from fcnseg.training import checkpoint as ckpt


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = build_model("fcn16s_efficientnet_lite0", num_classes=7, upsample="bilinear")
    with torch.no_grad():
        for parameter in net.head.parameters():
            parameter.normal_()  # score layers start at zero: make them tell apart
    return net


def _record(model, **extra):
    return modelfile.record_of(model, classes=SYNTHETIC_CLASSES, palette=voc_palette(7), **extra)


def _training():
    return {"epoch": 3, "optimizer": {"state": {0: {"momentum_buffer": torch.ones(2)}}}}


@pytest.mark.parametrize("name", ["a.pt", "a.safetensors"])
def test_round_trip_rebuilds_the_same_model(model, tmp_path, name):
    training = _training() if name.endswith(".pt") else None
    record = _record(model, metrics={"mean_iu": 0.5}, training=training)
    path = modelfile.write_record(tmp_path / name, record)
    loaded = modelfile.read_record(path)
    assert loaded.spec == model.spec and loaded.spec.name == "fcn16s_efficientnet_lite0"
    assert loaded.spec.upsample == "bilinear" and loaded.spec.task_classes == {"semantic": 7}
    assert loaded.classes == {"semantic": tuple(SYNTHETIC_CLASSES)}
    assert loaded.palette["semantic"][1] == (128, 0, 0)
    assert loaded.metrics == {"mean_iu": 0.5} and loaded.path == path
    assert tuple(loaded.spec.inputs[0].normalization.mean) == (127.0, 127.0, 127.0)
    if training:
        momentum = loaded.training["optimizer"]["state"][0]["momentum_buffer"]
        assert loaded.training["epoch"] == 3 and torch.equal(momentum, torch.ones(2))
    rebuilt = loaded.build()
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key
    x = torch.rand(1, 3, 40, 56) * 255
    model.eval(), rebuilt.eval()
    assert torch.equal(model(model.normalization(x)), rebuilt(rebuilt.normalization(x)))
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_a_training_checkpoint_is_a_torch_file(model, tmp_path):
    with pytest.raises(ValueError, match="name it .pt"):
        modelfile.write_record(tmp_path / "c.safetensors", _record(model, training=_training()))


def test_the_starting_weights_are_not_loaded_again(model, tmp_path, monkeypatch):
    """A model built from package weights records them in its spec; rebuilding it from the
    file takes the file's weights and never loads the package."""
    spec = dataclasses.replace(model.spec, pretrained_backbone=True)
    record = dataclasses.replace(_record(model), spec=spec)
    path = modelfile.write_record(tmp_path / "m.pt", record)
    from fcnseg import builder

    def refuse(*args, **kwargs):
        raise AssertionError("loaded the package weights")

    monkeypatch.setattr(builder, "load_package_weights", refuse)
    assert modelfile.read_record(path).spec.pretrained_backbone
    rebuilt = fcnseg.load_weights(path)
    assert not rebuilt.spec.pretrained_backbone
    assert rebuilt.spec.same_architecture(spec)


def test_writes_are_atomic_and_durable(model, tmp_path, monkeypatch):
    path = modelfile.write_record(tmp_path / "last.pt", _record(model))
    before = path.read_bytes()

    def crash(obj, file, *args, **kwargs):
        with open(file, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise KeyboardInterrupt  # as if killed mid-write

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        modelfile.write_record(path, _record(model))
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]
    monkeypatch.undo()

    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.fstat(fd).st_mode) or real(fd))
    atomic_write(tmp_path / "x.bin", lambda tmp: tmp.write_bytes(b"data"))
    kinds = ["dir" if (mode & 0o170000) == 0o040000 else "file" for mode in synced]
    assert kinds == ["file", "dir"]  # the file, then the folder that names it
    assert (tmp_path / "x.bin").read_bytes() == b"data"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_corrupt_files_give_one_line(model, tmp_path, damage, suffix):
    path = fcnseg.save_weights(tmp_path / f"c{suffix}", model)
    data = path.read_bytes()
    path.write_bytes(
        {"truncated": data[: len(data) // 2], "garbage": b"\x00\x13" * 500, "empty": b""}[damage]
    )
    for read in (modelfile.read_record, fcnseg.load_weights, ckpt.load_checkpoint):
        with pytest.raises(FileFormatError) as error:
            read(path)
        assert "\n" not in str(error.value) and str(path) in str(error.value)


class _Payload:
    """Unpickling this calls a function named in the file: what weights_only prevents."""

    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_a_file_that_would_run_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": modelfile.FORMAT, "version": 2, "payload": _Payload()}, path)
    with pytest.raises(FileFormatError, match="refused: loading it would run code") as error:
        modelfile.read_record(path)
    assert "weights_only=True" in str(error.value)
    assert "code ran" not in capsys.readouterr().out


def test_other_files_are_refused(model, tmp_path):
    plain = build_model("fcn16s_efficientnet_lite0", num_classes=7)
    torch.save(plain.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(modelfile.BareStateDict, match="bare state dict"):
        modelfile.read_record(tmp_path / "bare.pt")
    with pytest.raises(FileFormatError, match="pass the model name and the class count"):
        fcnseg.load_weights(tmp_path / "bare.pt")
    bare = fcnseg.load_weights(
        tmp_path / "bare.pt", model="fcn16s_efficientnet_lite0", num_classes=7
    )
    assert bare.spec.upsample == "deconv"  # a bare file says nothing of its build
    torch.save(model.state_dict(), tmp_path / "bilinear.pt")  # no upscore weights
    with pytest.raises(FileFormatError, match="bilinear.pt: .*missing from the weights"):
        fcnseg.load_weights(tmp_path / "bilinear.pt", model="fcn16s_efficientnet_lite0", num_classes=7)  # fmt: skip
    with pytest.raises(FileNotFoundError, match="not found"):
        modelfile.read_record(tmp_path / "missing.pt")
    torch.save({"weights": [1, 2]}, tmp_path / "other.pt")
    with pytest.raises(FileFormatError, match="not an fcnseg model file"):
        modelfile.read_record(tmp_path / "other.pt")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_newer_format_asks_for_an_upgrade(model, tmp_path, suffix, monkeypatch):
    """Said before the checksum is checked: a newer fcnseg may compute it otherwise."""
    monkeypatch.setattr(modelfile, "VERSION", modelfile.VERSION + 1)
    path = fcnseg.save_weights(tmp_path / f"newer{suffix}", model)
    monkeypatch.undo()
    with pytest.raises(FileFormatError, match="upgrade fcnseg"):
        modelfile.read_record(path)


def test_a_file_of_another_model_or_class_count(model, tmp_path):
    path = fcnseg.save_weights(tmp_path / "m.pt", model)
    with pytest.raises(FileFormatError, match="records model 'fcn16s_efficientnet_lite0'"):
        fcnseg.load_weights(path, model="fcn8s_efficientnet_lite0")
    with pytest.raises(FileFormatError, match="records num_classes 7, not 5"):
        fcnseg.load_weights(path, num_classes=5)
    assert fcnseg.load_weights(path, model="fcn16s_efficientnet_lite0", num_classes=7)
    record = modelfile.read_record(path)
    record.state_dict.pop("head.score_fr.weight")
    with pytest.raises(FileFormatError, match="missing head.score_fr.weight"):
        record.build()
    other = build_model("fcn16s_efficientnet_lite0", num_classes=5)
    with pytest.raises(FileFormatError, match="shape of head.score_fr.weight"):
        modelfile.load_state(other, model.state_dict(), where=path)


def test_rng_states_survive_weights_only_loading(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    torch.save(ckpt.rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    ckpt.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


def test_build_options_travel_with_the_weights(tmp_path):
    """A non-default build (caffe geometry, bilinear upsampling, output stride 16)."""
    model = build_model(
        "fcn8s_resnet18", num_classes=3, geometry="caffe", upsample="bilinear", output_stride=16
    )
    assert modelfile.record_of(model).spec.output_stride == 16
    for suffix in (".pt", ".safetensors"):
        rebuilt = fcnseg.load_weights(fcnseg.save_weights(tmp_path / f"w{suffix}", model))
        assert rebuilt.spec == model.spec
        assert rebuilt.backbone.output_stride == 16 and rebuilt.backbone.geometry == "caffe"
