"""``fcnseg train``: config file, overrides, run folders, resume and errors."""

import json
import math

import pytest
import torch

from fcnseg.cli import main
from fcnseg.losses import SegmentationLoss


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
    assert "finished after 2 iterations; best mean IU" in out and str(run) in out
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
    assert "needs --config FILE" in capsys.readouterr().err
    assert main(["train", "--config", str(config_file), "optimizer=adam"]) == 2
    assert "choose one of sgd, adamw" in capsys.readouterr().err


def test_nan_loss_exits_with_a_message(config_file, monkeypatch, capsys):
    forward = SegmentationLoss.forward
    monkeypatch.setattr(
        SegmentationLoss, "forward", lambda self, x, y: forward(self, x, y) * math.nan
    )
    assert main(["train", "--config", str(config_file)]) == 1
    err = capsys.readouterr().err
    assert "loss is nan after iteration 0" in err and "no checkpoint was saved yet" in err


def test_nan_learning_rate_names_the_key(config_file, fcnseg_cli, file_hashes, one_line_error):
    before = file_hashes(config_file.parent)
    result = fcnseg_cli("train", "--config", config_file, "lr=nan")
    assert result.returncode == 2
    assert "lr = nan is not a finite number" in one_line_error(result)
    assert file_hashes(config_file.parent) == before  # no run folder either
