"""The checkpoint format: round trips, atomic writes, and refusals of bad files."""

import random

import numpy as np
import pytest
import torch

from fcnseg import build_model
from fcnseg.data import SYNTHETIC_CLASSES, voc_palette
from fcnseg.engine import checkpoint as ckpt
from fcnseg.engine.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = build_model("fcn16s_efficientnet_lite0", num_classes=7, upsample="bilinear")
    with torch.no_grad():
        for parameter in net.head.parameters():
            parameter.normal_()  # score layers start at zero: make them tell apart
    return net


def _checkpoint(model, **extra):
    return ckpt.make_checkpoint(
        model,
        build_options={"upsample": "bilinear", "pretrained_backbone": True},
        classes=SYNTHETIC_CLASSES,
        palette=voc_palette(7),
        **extra,
    )


def test_round_trip_rebuilds_the_same_model(model, tmp_path):
    path = ckpt.save_checkpoint(_checkpoint(model, metrics={"mean_iu": 0.5}), tmp_path / "a.pt")
    loaded = ckpt.load_checkpoint(path)
    assert loaded["model"] == {
        "name": "fcn16s_efficientnet_lite0",
        "num_classes": 7,
        "options": {"upsample": "bilinear"},  # weights come from the file, not a package
    }
    assert loaded["classes"] == list(SYNTHETIC_CLASSES) and loaded["palette"][1] == [128, 0, 0]
    assert loaded["normalization"]["mean"] == [127.0, 127.0, 127.0]
    rebuilt = ckpt.model_from_checkpoint(loaded, path)
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key
    x = torch.rand(1, 3, 40, 56) * 255
    model.eval(), rebuilt.eval()
    assert torch.equal(model(model.normalization(x)), rebuilt(rebuilt.normalization(x)))
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_a_failed_write_leaves_the_old_checkpoint(model, tmp_path, monkeypatch):
    path = ckpt.save_checkpoint(_checkpoint(model), tmp_path / "last.pt")
    before = path.read_bytes()

    def crash(obj, file, *args, **kwargs):
        file.write(b"half a checkpoint")
        raise KeyboardInterrupt  # as if killed mid-write

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(_checkpoint(model), path)
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_files_give_one_line(model, tmp_path, damage):
    path = ckpt.save_checkpoint(_checkpoint(model), tmp_path / "c.pt")
    data = path.read_bytes()
    path.write_bytes(
        {"truncated": data[: len(data) // 2], "garbage": b"\x00\x13" * 500, "empty": b""}[damage]
    )
    with pytest.raises(CheckpointError, match="corrupt or truncated") as error:
        ckpt.load_checkpoint(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


class _Payload:
    """Unpickling this calls a function named in the file: what weights_only prevents."""

    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": ckpt.FORMAT, "version": 1, "payload": _Payload()}, path)
    with pytest.raises(CheckpointError, match="refused: loading it would run code") as error:
        ckpt.load_checkpoint(path)
    assert "weights_only=True" in str(error.value)
    assert "code ran" not in capsys.readouterr().out


def test_other_files_are_refused(model, tmp_path):
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="not an fcnseg checkpoint"):
        ckpt.load_checkpoint(tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")
    newer = _checkpoint(model)
    newer["version"] = ckpt.VERSION + 1
    torch.save(newer, tmp_path / "newer.pt")
    with pytest.raises(CheckpointError, match="upgrade fcnseg"):
        ckpt.load_checkpoint(tmp_path / "newer.pt")


def test_wrong_model_or_class_count(model, tmp_path):
    checkpoint = _checkpoint(model)
    other = build_model("fcn16s_efficientnet_lite0", num_classes=5, upsample="bilinear")
    with pytest.raises(CheckpointError, match="holds fcn16s_efficientnet_lite0 with 7 classes"):
        ckpt.load_weights(other, checkpoint, "x.pt")
    other = build_model("fcn8s_efficientnet_lite0", num_classes=7)
    with pytest.raises(CheckpointError, match="this run builds fcn8s_efficientnet_lite0"):
        ckpt.check_compatible(checkpoint, other, "x.pt")
    broken = _checkpoint(model)
    broken["state_dict"] = dict(broken["state_dict"])
    broken["state_dict"].pop("head.score_fr.weight")
    with pytest.raises(CheckpointError, match="missing head.score_fr.weight"):
        ckpt.model_from_checkpoint(broken, "y.pt")


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
    from fcnseg.weights import load_weights, save_weights

    model = build_model(
        "fcn8s_resnet18", num_classes=3, geometry="caffe", upsample="bilinear", output_stride=16
    )
    checkpoint = ckpt.make_checkpoint(model, classes=["a", "b", "c"], palette=[(0, 0, 0)] * 3)
    assert checkpoint["model"]["options"]["output_stride"] == 16
    for suffix in (".pt", ".safetensors"):
        rebuilt = load_weights(save_weights(tmp_path / f"w{suffix}", model))
        assert rebuilt.build_options == model.build_options
        assert rebuilt.backbone.output_stride == 16 and rebuilt.backbone.geometry == "caffe"
