"""``fcnseg train``: config file, overrides, run folders, resume and errors."""

import json
import math

import numpy as np
import pytest
import torch

from fcnseg import build_model
from fcnseg.cli import main
from fcnseg.config import load_config
from fcnseg.inference import Segmenter
from fcnseg.losses import SegmentationLoss
from fcnseg.training.checkpoint import load_checkpoint
from fcnseg.training.initialize import build_model_for
from fcnseg.training.setup import build_data, model_spec


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(
        'model = "fcn32s_efficientnet_lite0"\n'
        "train_options = { size = 32, num_images = 4 }\n"
        "val_options = { size = 32, num_images = 2 }\n"
        "epochs = 3\nbatch_size = 2\nnum_workers = 0\nthreads = 1\noverlays = 0\n"
        "scale_range = [0.5, 1.0]\ncrop_size = 32\n"
        f'output = "{tmp_path / "runs"}"\n'
    )
    return path


def test_train_with_overrides_then_resume(config_file, tmp_path, capsys):
    assert main(["train", "--config", str(config_file), "epochs=1", "lr=0.02"]) == 0
    out = capsys.readouterr().out
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("tiny-")  # <config name>-<date>-<time>
    assert "finished after 2 steps; best mean IU" in out and str(run) in out
    saved = json.loads((run / "config.json").read_text())
    assert (saved["epochs"], saved["lr"], saved["model"]) == (1, 0.02, "fcn32s_efficientnet_lite0")
    assert main(["train", "--resume", str(run)]) == 0
    assert "has finished already" in capsys.readouterr().out


def test_explicit_run_dir(config_file, tmp_path):
    assert main(["train", "--config", str(config_file), "--run-dir", str(tmp_path / "r"), "max_iters=1"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["iterations"] == 1


def test_config_errors_are_one_line(config_file, capsys):
    assert main(["train", "--config", str(config_file), "lerning_rate=0.1"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'lerning_rate': did you mean 'lr'?" in err and err.count("\n") == 1
    assert main(["train"]) == 2
    assert "needs root=DIR" in capsys.readouterr().err
    assert main(["train", "--config", str(config_file), "optimizer=adam"]) == 2
    assert "choose one of sgd, adamw" in capsys.readouterr().err


def test_nan_loss_exits_with_a_message(config_file, monkeypatch, capsys):
    forward = SegmentationLoss.forward
    monkeypatch.setattr(
        SegmentationLoss, "forward", lambda self, x, y: forward(self, x, y) * math.nan
    )
    assert main(["train", "--config", str(config_file)]) == 1
    err = capsys.readouterr().err
    assert "loss is nan after step 0" in err and "no checkpoint was saved yet" in err


def test_nan_learning_rate_names_the_key(config_file, fcnseg_cli, file_hashes, one_line_error):
    before = file_hashes(config_file.parent)
    result = fcnseg_cli("train", "--config", config_file, "lr=nan")
    assert result.returncode == 2
    assert "lr = nan is not a finite number" in one_line_error(result)
    assert file_hashes(config_file.parent) == before  # no run folder either


@pytest.mark.parametrize(
    "override, says",
    [("device=cdua", "device 'cdua' is not a device: choose auto, cpu, cuda or cuda:N"),
     ("train_options={colour = 1, size = 32}",
      "train_options.colour is not an option of dataset 'synthetic': it takes size, "
      "num_images, seed"),
     ("val_options={sizes = 32}",
      "val_options.sizes is not an option of dataset 'synthetic': did you mean 'size'?")],
)  # fmt: skip
def test_a_wrong_device_or_reader_option_is_one_line(
    config_file, override, says, fcnseg_cli, file_hashes, one_line_error
):
    """Each was a traceback: torch's list of twenty device types, the reader's TypeError."""
    before = file_hashes(config_file.parent)
    result = fcnseg_cli("train", "--config", config_file, override)
    assert result.returncode == 2
    assert says in one_line_error(result)
    assert file_hashes(config_file.parent) == before  # no run folder either


# ---------------------------------------------------------------------- spec options (issue 12)


def test_output_stride_reaches_the_run_config_and_the_checkpoint(config_file, tmp_path):
    run = tmp_path / "os16"
    args = ["--run-dir", str(run), "max_iters=1", "output_stride=16"]
    assert main(["train", "--config", str(config_file), *args]) == 0
    assert json.loads((run / "config.json").read_text())["model_options"] == {"output_stride": 16}
    record = load_checkpoint(run / "last.pt")
    assert record.spec.output_stride == 16
    assert record.build().head.score_stride == 16  # rarefied: 16-pixel score cells
    assert main(["train", "--resume", str(run)]) == 0  # the saved config rebuilds the same net


def test_in_channels_with_the_pretrained_backbone(config_file):
    """Four input channels on the ImageNet EfficientNet-Lite0: the RGB filters are kept, the
    fourth starts as their mean, the normalisation has four entries. No dataset here gives
    4-channel images, so the run is checked where it is built, and training on 3-channel
    synthetic images stops before the first step with one line naming the channels."""
    config = load_config(config_file, ["in_channels=4", "pretrained_backbone=true"]).resolved()
    data = build_data(config)
    spec = model_spec(config, data)
    assert spec.input_channels == {"image": 4} and spec.pretrained_backbone
    model = build_model_for(config, spec, init=True)
    rgb = build_model("fcn32s_efficientnet_lite0", num_classes=7, pretrained_backbone=True)
    stem, rgb_stem = model.backbone._conv_stem.weight, rgb.backbone._conv_stem.weight
    assert stem.shape[1] == 4
    assert torch.equal(stem[:, :3], rgb_stem)
    torch.testing.assert_close(stem[:, 3], rgb_stem.mean(dim=1))
    assert len(model.normalization.mean) == len(model.normalization.std) == 4
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 4), dtype=np.uint8)
    assert Segmenter(model).predict(image).shape == (40, 50)  # no crash in a convolution


def test_in_channels_that_the_data_lacks_is_one_line_before_training(config_file, tmp_path, capsys):
    args = ["--run-dir", str(tmp_path / "four"), "in_channels=4", "pretrained_backbone=true"]
    assert main(["train", "--config", str(config_file), *args]) == 2
    err = capsys.readouterr().err
    assert "reads image 4 channel(s), but the images of synthetic have image 3 channel(s)" in err
    assert err.count("\n") == 1 and not (tmp_path / "four").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("output_stride=7", "output_stride = 7 is not allowed: choose one of 8, 16, 32"),
        ("in_channels=four", "in_channels = 'four' should be an integer"),
        ("fusion=late", "late fusion needs two inputs or more"),
        ("tasks=[33, 3]", "tasks = [33, 3] should be a table of name = count"),
        ("model_options={ouput_stride = 8}", "unknown model option 'ouput_stride': did you mean 'output_stride'?"),
        ("backbone=resnet18", "backbone is set by the model's name"),
    ],
)  # fmt: skip
def test_a_wrong_model_option_is_one_line_naming_the_key(config_file, capsys, override, message):
    assert main(["train", "--config", str(config_file), override]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
