"""The path a new user takes with their own data (issue 14, acceptance), run as a user runs
it: the command line in a subprocess, on folder datasets made from real CamVid frames.

1. The walkthrough: masks in each accepted format read as the same labels; train a few steps
   without a config file; evaluate with a per-image CSV; predict into the images' own folder
   (every input file unchanged); export ONNX and predict with it (class names and colours
   kept).
2. The README's "Train on your own data" commands, extracted from README.md and run as
   written; only ``fcnseg train`` gets a few tiny-run overrides appended (steps, crops,
   loader processes), so the test takes seconds, not the defaults' ten epochs.
"""

from __future__ import annotations

import csv
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from own_data import CLASSES, COLORS, ROAD, make_folder_dataset, needs_camvid
from PIL import Image

from fcnseg.data import FolderDataset

pytestmark = [needs_camvid, pytest.mark.filterwarnings("ignore:.*never occurs")]

README = Path(__file__).resolve().parents[1] / "README.md"
# appended to each `fcnseg train` line: two steps of two 48-pixel crops, no loader processes
TINY_TRAIN = ["max_iters=2", "batch_size=2", "crop_size=48", "num_workers=0", "overlays=0"]


def _labels(root: Path, **options) -> list[np.ndarray]:
    dataset = FolderDataset(root, **options)
    return [dataset.load(index)[1].numpy() for index in range(len(dataset))]


@pytest.mark.slow
@pytest.mark.onnx
def test_a_user_walks_the_own_data_path(tmp_path, fcnseg_cli, file_hashes):
    folders = {fmt: make_folder_dataset(tmp_path / fmt, fmt, count=5) for fmt in
               ("index", "palette", "colour", "binary")}  # fmt: skip
    index = _labels(folders["index"])
    for fmt in ("palette", "colour"):
        assert all(np.array_equal(a, b) for a, b in zip(index, _labels(folders[fmt]), strict=True))
    binary = _labels(folders["binary"], value_map={0: 0, 255: 1})
    assert all(np.array_equal(a == ROAD, b == 1) for a, b in zip(index, binary, strict=True))

    data = folders["colour"]
    before = file_hashes(data)
    runs = tmp_path / "runs"
    trained = fcnseg_cli("train", f"root={data}", f"output={runs}", "name=mine", *TINY_TRAIN)
    assert trained.returncode == 0, trained.stderr
    assert "4 train / 1 val images" in trained.stdout
    assert "weights: ImageNet-pretrained backbone" in trained.stdout
    best = runs / "mine" / "best.pt"

    scores = tmp_path / "scores.csv"
    evaluated = fcnseg_cli(
        "eval", "--checkpoint", best, "--data", "folder", "--root", data, "--split", "none",
        "--workers", "0", "--per-image", scores,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    with scores.open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["image"] for row in rows) == sorted(
        p.stem for p in (data / "images").iterdir()
    )
    assert "the 5 worst images by mean IU" in evaluated.stdout

    images = data / "images"
    predicted = fcnseg_cli("predict", "--checkpoint", best, images, "--out", images)
    assert predicted.returncode == 0, predicted.stderr
    assert "5 image(s) predicted" in predicted.stdout
    assert all(file_hashes(data)[path] == digest for path, digest in before.items())
    mask = Image.open(next(images.glob("*[0-9].png")))
    assert mask.mode == "P" and _palette(mask)[: len(COLORS)] == COLORS  # classes.txt colours

    pytest.importorskip("onnxruntime")
    onnx_file = tmp_path / "mine.onnx"
    exported = fcnseg_cli("export", "onnx", "--checkpoint", best, "--out", onnx_file)
    assert exported.returncode == 0, exported.stderr
    onnx_out = tmp_path / "onnx"
    from_onnx = fcnseg_cli("predict", "--checkpoint", onnx_file, images, "--out", onnx_out)
    assert from_onnx.returncode == 0, from_onnx.stderr
    from fcnseg.inference import Segmenter

    assert Segmenter.from_onnx(onnx_file).classes == tuple(CLASSES)
    onnx_mask = Image.open(onnx_out / Path(mask.filename).name)
    assert _palette(onnx_mask)[: len(COLORS)] == COLORS
    assert (np.array(onnx_mask) == np.array(mask)).mean() > 0.99
    assert all(file_hashes(data)[path] == digest for path, digest in before.items())


def _palette(image: Image.Image) -> list[tuple[int, int, int]]:
    flat = image.getpalette()
    return [tuple(flat[i : i + 3]) for i in range(0, len(flat), 3)]


def readme_commands() -> list[str]:
    """The lines of the fenced ``bash`` blocks of README's "Train on your own data"."""
    text = README.read_text()
    section = text.split("## Train on your own data", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_readme_own_data_section_runs_as_written(tmp_path, cli_environment):
    commands = readme_commands()
    assert [line.split()[:2] for line in commands] == [
        ["fcnseg", "train"], ["fcnseg", "eval"], ["fcnseg", "predict"], ["fcnseg", "export"],
        ["fcnseg", "predict"],
    ]  # fmt: skip
    make_folder_dataset(tmp_path / "my-data", "colour", count=5)
    bin_dir = tmp_path / "bin"  # `fcnseg` on PATH runs this checkout
    bin_dir.mkdir()
    (bin_dir / "fcnseg").write_text(f'#!/bin/sh\nexec {sys.executable} -m fcnseg "$@"\n')
    (bin_dir / "fcnseg").chmod(0o755)
    env = {**cli_environment, "PATH": f"{bin_dir}:{cli_environment['PATH']}"}
    if "onnx" in " ".join(commands):
        pytest.importorskip("onnxruntime")
    for line in commands:
        if line.startswith("fcnseg train"):
            line += " " + " ".join(map(shlex.quote, TINY_TRAIN))
        done = subprocess.run(
            line, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, (line, done.stdout, done.stderr)
    assert (tmp_path / "runs" / "my-data" / "val_images.txt").is_file()
    assert (tmp_path / "runs" / "my-data" / "per-image.csv").is_file()
    for out in ("predictions", "predictions-onnx"):
        assert len(list((tmp_path / "my-data" / out).glob("*_overlay.png"))) == 5
