"""``fcnseg train`` without a config file on a folder of real CamVid frames (issue 14): the
folder defaults, the seeded random val split, ``split=none``, warm-up fitted to the run, the
announcement, and the progress: one bar on a terminal, loss lines in a log."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from own_data import CLASSES, camvid_frames, make_folder_dataset, needs_camvid, save_mask

import fcnseg
from fcnseg.cli import main
from fcnseg.config import ConfigError, load_config
from fcnseg.training.checkpoint import load_checkpoint
from fcnseg.training.feedback import Feedback
from fcnseg.training.optim import LRSchedule, fit_warmup
from fcnseg.training.splits import hold_out

TINY = ["batch_size=2", "threads=1", "num_workers=0", "crop_size=48", "overlays=0"]


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@needs_camvid
@pytest.mark.slow
def test_train_without_config_on_a_flat_folder(tmp_path, fcnseg_cli, file_hashes):
    data = make_folder_dataset(tmp_path / "street", "index", count=6)
    before = file_hashes(data)
    runs = tmp_path / "runs"
    result = fcnseg_cli("train", f"root={data}", f"output={runs}", "max_iters=4", "log_every=2", *TINY)  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    (run,) = runs.iterdir()
    assert run.name.startswith("street-")  # named after the data folder
    # the announcement: what was chosen, then steps, epochs, warm-up, weights, data, folder
    assert "has no 'train' split: training on its images" in out
    assert "no 'val' split either: validating on a random 20% of the training images" in out
    assert "(split_seed=0; listed in val_images.txt)" in out
    assert "warm-up: 100 steps would take all of this 4-step run" in out
    assert "5 train / 1 val images (a random 20% held out, split_seed 0)" in out
    assert "4 steps = 2 epoch(s) of 2 steps" in out and "warm-up 0 steps" in out
    assert "weights: ImageNet-pretrained backbone" in out and f"run folder {run}" in out
    # not a terminal: a loss line every log_every steps, with an ETA, and no bar
    assert "step 2/4 (epoch 1/2): loss" in out and "step 4/4 (epoch 2/2)" in out
    assert "ETA" in out and "\r" not in out
    config = json.loads((run / "config.json").read_text())
    assert config["dataset"] == "folder" and config["model_options"]["pretrained_backbone"]
    assert (config["train_split"], config["val_split"]) == (None, "random")
    assert (config["val_fraction"], config["split_seed"], config["warmup_iters"]) == (0.2, 0, 0)
    assert (config["optimizer"], config["crop_size"]) == ("adamw", 48)
    held = (run / "val_images.txt").read_text().split()
    assert len(held) == 1 and (data / "images" / f"{held[0]}.jpg").is_file()
    assert file_hashes(data) == before


def test_without_config_or_root_is_one_line(tmp_path, fcnseg_cli, one_line_error):
    result = fcnseg_cli("train", f"output={tmp_path}")
    assert result.returncode == 2
    assert "needs root=DIR, a folder with images/, masks/ and classes.txt" in one_line_error(result)
    assert not any(tmp_path.iterdir())


def test_split_none_from_the_command_line_and_toml(tmp_path):
    config = load_config(None, ["split=none"])
    assert (config.train_split, config.val_split) == (None, None)
    path = tmp_path / "flat.toml"
    path.write_text('dataset = "folder"\nroot = "x"\ntrain_split = "none"\nval_split = "None"\n')
    assert (load_config(path).train_split, load_config(path).val_split) == (None, None)
    path.write_text('split = "none"\n')
    assert load_config(path, ["val_split=random"]).val_split == "random"
    with pytest.raises(ConfigError, match="0 < val_fraction < 1"):
        load_config(None, ["val_fraction=1.0"])


def test_random_hold_out_is_seeded_disjoint_and_complete():
    images = list(range(20))
    train, val = hold_out(images, images, 0.2, seed=3)
    assert len(val) == 4 and len(train) == 16
    assert sorted([*train.indices, *val.indices]) == images
    again = hold_out(images, images, 0.2, seed=3)[1]
    other = hold_out(images, images, 0.2, seed=4)[1]
    assert again.indices == val.indices and other.indices != val.indices
    with pytest.raises(ConfigError, match="at least 2 images"):
        hold_out([0], [0], 0.2, seed=0)


def test_warmup_longer_than_the_run_is_scaled_and_the_lr_peaks():
    """The issue's case: 100 warm-up steps and max_iters = 40 peaked at 1.07e-4 for 1e-3."""
    config = load_config(None, ["max_iters=40", "optimizer=adamw", "lr=1e-3"]).resolved()
    fitted, note = fit_warmup(config, 40)
    assert fitted.warmup_iters == 4 and "scaled to 4 steps" in note
    before = max(LRSchedule("poly", 40, 100)(step) for step in range(40))
    after = max(LRSchedule("poly", 40, fitted.warmup_iters)(step) for step in range(40))
    assert before < 0.2 and after > 0.9
    short = load_config(None, ["warmup_iters=10"]).resolved()
    assert fit_warmup(short, 100) == (short, None)  # a tenth of the run: left alone


def test_one_progress_bar_for_the_whole_run(capsys):
    feedback = Feedback(6, 2, every=2, enabled=True, tty=True)  # 3 epochs of 2 steps
    feedback.open(0)
    for step in range(1, 7):
        feedback.step(step, (step - 1) // 2, loss=1.0, lr=0.1, rate=5.0)
        if step == 3:
            feedback.write("step 3: pixel acc 50.0")
    feedback.close()
    out = capsys.readouterr().out
    assert "6/6" in out and "epoch=3/3" in out and "step 3: pixel acc" in out
    assert "step 2/6" not in out  # no loss lines beside the bar
    assert out.count("train:") >= 1 and "epoch 1/" not in out  # not one bar per epoch


def test_a_run_on_a_terminal_shows_one_bar_over_every_epoch(tmp_path, capsys, monkeypatch):
    """Three epochs, one bar counting to the run's 3 steps (the old bars counted each epoch's
    one step and vanished)."""
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    monkeypatch.setenv("COLUMNS", "100")  # a terminal with a width (pytest's stdout has none)
    options = ["train_options={size=32,num_images=2}", "val_options={size=32,num_images=1}"]
    args = ["model=fcn32s_efficientnet_lite0", "dataset=synthetic", *options, "epochs=3", *TINY]
    assert main(["train", "--run-dir", str(tmp_path / "r"), *args]) == 0
    out = capsys.readouterr().out
    assert "3/3" in out and "epoch=3/3" in out
    assert "1/1 [" not in out  # no bar of one epoch's single step


def test_a_terminal_without_a_width_gets_the_step_lines(capsys, monkeypatch):
    """Issue 30: a pseudo-terminal with no window size made tqdm draw a bar of width 0:
    nothing at all. Such a terminal gets the lines a log file gets."""
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr("os.get_terminal_size", lambda *fd: os.terminal_size((0, 0)))
    feedback = Feedback(4, 2, every=2, enabled=True)
    assert not feedback.tty
    feedback.open(0)
    for step in range(1, 5):
        feedback.step(step, (step - 1) // 2, loss=1.0, lr=0.1, rate=5.0)
    feedback.close()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in lines] == ["step 2/4", "step 4/4"]
    monkeypatch.setattr("os.get_terminal_size", lambda *fd: os.terminal_size((120, 40)))
    assert Feedback(4, 2, every=2, enabled=True).tty


@needs_camvid
def test_a_folder_with_a_train_split_only_holds_out_from_it(tmp_path):
    """train.txt but no val split: the train list is kept, val drawn from it, said so."""
    from fcnseg.training.splits import fit_folder_splits

    data = make_folder_dataset(tmp_path / "d", "index", count=3)
    (data / "train.txt").write_text("".join(f"{p.stem}\n" for p in (data / "images").iterdir()))
    config, notes = fit_folder_splits(load_config(None, ["dataset=folder", f"root={data}"]))
    assert (config.train_split, config.val_split) == ("train", "random")
    assert notes == [
        "no 'val' split: validating on a random 20% of the training images (split_seed=0; "
        "listed in val_images.txt)"
    ]
    explicit = load_config(None, ["dataset=folder", f"root={data}", "val_split=none"])
    assert fit_folder_splits(explicit) == (explicit, [])  # none is a choice, kept


def _five_class_folder(root: Path) -> Path:
    """root/images, root/masks (CamVid's first five classes, the rest ignored), classes.txt."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("\n".join(CLASSES[:5]) + "\n")
    for stem, image, labels in camvid_frames(4):
        image.save(root / "images" / f"{stem}.png")
        labels[labels >= 5] = 255
        save_mask(root / "masks" / f"{stem}.png", labels, "index")
    return root


@needs_camvid
@pytest.mark.slow
def test_init_from_another_class_count_starts_the_score_layers_anew(tmp_path, fcnseg_cli):
    """A 3-class checkpoint starts a 5-class run: the backbone transfers, and the score
    layers start as a new model's (zero), named in the one line that says so."""
    data = _five_class_folder(tmp_path / "five")
    source = fcnseg.build_model("fcn32s_efficientnet_lite0", num_classes=3)
    with torch.no_grad():
        source.head.score_fr.weight.fill_(1.0)  # a trained score layer, for three classes
    weights = fcnseg.save_weights(tmp_path / "three.pt", source, classes=["a", "b", "c"])
    run = tmp_path / "run"
    result = fcnseg_cli(
        "train", "--run-dir", run, f"root={data}", "model=fcn32s_efficientnet_lite0",
        f"init_from={weights}", "pretrained_backbone=false", "lr=1e-30", "max_iters=1", *TINY,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("init_from")]
    assert line.endswith(
        "; re-initialised for 5 classes (the checkpoint has 3): head.score_fr, head.upscore"
    )
    trained = load_checkpoint(run / "last.pt").build()
    assert trained.head.score_fr.weight.shape[0] == 5
    assert trained.head.score_fr.weight.abs().max() < 1e-12  # not the source's ones
    mine = dict(trained.backbone.named_parameters())
    for name, tensor in source.backbone.named_parameters():  # lr 1e-30: as transplanted
        assert torch.allclose(mine[name], tensor, rtol=0, atol=1e-12), name


@needs_camvid
@pytest.mark.slow
def test_a_crop_larger_than_every_image_is_one_warning(tmp_path, fcnseg_cli):
    """The folder default crop (512) on 64x48 images pads every sample: one warning line
    names the crop, the largest image and the key to set; a crop that fits says nothing."""
    data = make_folder_dataset(tmp_path / "small", "index", count=4)
    quick = ["model=fcn32s_efficientnet_lite0", "pretrained_backbone=false", "max_iters=1",
             "batch_size=2", "threads=1", "num_workers=0", "overlays=0"]  # fmt: skip
    result = fcnseg_cli("train", f"root={data}", f"output={tmp_path / 'runs'}", *quick)
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "crop_size" in line]
    assert warned == [
        "fcnseg: warning: crop_size 512 exceeds every training image (the largest is 64x48, "
        "128x96 at scale 2): each sample is padded to 512x512, which slows training for "
        "nothing; set crop_size=128 or less"
    ]
    result = fcnseg_cli("train", f"root={data}", f"output={tmp_path / 'runs'}", "crop_size=128", *quick)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "crop_size" not in result.stderr
