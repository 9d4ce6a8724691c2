"""``fcnseg eval`` of a run's checkpoint scores what the run held out (issue 30): the images
of its ``val_images.txt`` by default, and a warning counts the scored images that trained
it, so that a score never flatters the model unnoticed."""

from __future__ import annotations

import csv
import json

import pytest
from own_data import CLASSES, make_folder_dataset, needs_camvid

from fcnseg.training.splits import held_out_indices, hold_out

TINY = ["model=fcn32s_efficientnet_lite0", "pretrained_backbone=false", "max_iters=1",
        "batch_size=2", "threads=1", "num_workers=0", "crop_size=48", "overlays=0"]  # fmt: skip


def test_held_out_indices_are_those_hold_out_keeps() -> None:
    images = list(range(25))
    train, val = hold_out(images, images, 0.2, 7)
    assert val.indices == held_out_indices(25, 0.2, 7) and len(val.indices) == 5
    assert sorted(train.indices + val.indices) == images


def _eval(fcnseg_main, data, run, *options):
    return fcnseg_main("eval", "--checkpoint", run / "last.pt", "--data", "folder", "--root", data,
                       "--workers", "0", "--threads", "1", *options)  # fmt: skip


def _warnings(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if "training images of" in line]


@needs_camvid
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*never occurs")
def test_eval_scores_the_images_the_run_held_out(tmp_path, fcnseg_main, file_hashes):
    """A 1-step run on 10 CamVid frames without splits holds out 2: eval scores those two
    (by default and with --split random), and --split none warns that 8 trained it."""
    data = make_folder_dataset(tmp_path / "data", "index", count=10)
    run = tmp_path / "run"
    trained = fcnseg_main("train", "--run-dir", run, f"root={data}", *TINY)
    assert trained.returncode == 0, trained.stderr
    held = sorted((run / "val_images.txt").read_text().split())
    assert len(held) == 2
    before = file_hashes(data)
    for options in ((), ("--split", "random")):
        scores = tmp_path / "scores.csv"
        result = _eval(fcnseg_main, data, run, "--per-image", scores, *options)
        assert result.returncode == 0, result.stderr
        assert f"scoring the 2 images the run of {run / 'last.pt'} held out" in result.stdout
        assert "on folder held-out images (2 images)" in result.stdout
        assert not _warnings(result)
        with scores.open() as handle:
            assert sorted(row["image"] for row in csv.DictReader(handle)) == held
    report = json.loads((run / "eval-last-folder-random.json").read_text())
    assert report["images"] == 2
    result = _eval(fcnseg_main, data, run, "--split", "none")
    assert result.returncode == 0, result.stderr
    assert "on folder all images (10 images)" in result.stdout
    assert _warnings(result) == [
        f"fcnseg: warning: 8 of the 10 images scored are training images of {run / 'last.pt'}: "
        "their score flatters it; leave --split out to score the images its run held out"
    ]
    assert file_hashes(data) == before


@needs_camvid
@pytest.mark.filterwarnings("ignore:.*never occurs")
def test_split_random_needs_a_run_that_held_images_out(
    tmp_path, make_checkpoint, fcnseg_main, one_line_error, file_hashes
) -> None:
    data = make_folder_dataset(tmp_path / "data", "index", count=3)
    checkpoint = make_checkpoint(tmp_path / "model.pt", CLASSES)
    before = file_hashes(tmp_path)
    result = fcnseg_main("eval", "--checkpoint", checkpoint, "--data", "folder", "--root", data,
                         "--split", "random", "--workers", "0")  # fmt: skip
    assert result.returncode == 2
    line = one_line_error(result)
    assert "was not trained with val_split = random on folder" in line
    assert line.endswith("name a split of the dataset (val, test, none)")
    assert file_hashes(tmp_path) == before
