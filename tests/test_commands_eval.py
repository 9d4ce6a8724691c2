"""``fcnseg eval``: the four metrics, a per-class table and a JSON file."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from own_data import CLASSES, make_folder_dataset, needs_camvid
from PIL import Image

import fcnseg
from fcnseg.cli import main
from fcnseg.data import SYNTHETIC_CLASSES, FolderDataset, voc_palette
from fcnseg.inference import Segmenter
from fcnseg.metrics import ConfusionMatrix, metrics_from_matrix
from fcnseg.modelfile import record_of
from fcnseg.training import checkpoint as ckpt


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _save(path, num_classes=7):
    model = fcnseg.build_model("fcn32s_efficientnet_lite0", num_classes=num_classes)
    classes = list(SYNTHETIC_CLASSES)[:num_classes]
    record = record_of(model, classes=classes, palette=voc_palette(num_classes))
    return ckpt.save_checkpoint(record, path)


def test_eval_prints_metrics_and_writes_json(tmp_path, capsys):
    path = _save(tmp_path / "best.pt")
    args = ["eval", "--checkpoint", str(path), "--data", "synthetic", "--workers", "0"]
    args += ["--option", "size=32", "--option", "num_images=3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "fcn32s_efficientnet_lite0 on synthetic val (3 images)" in out
    for label in ("pixel acc", "mean acc", "mean IU", "f.w. IU"):
        assert label in out
    rows = [line.split() for line in out.splitlines()]
    assert ["class", "IU", "acc"] in rows and any(row[:1] == ["ring"] for row in rows)
    report = json.loads((tmp_path / "eval-best-synthetic-val.json").read_text())
    assert "fractions of 1" in report["units"]
    assert report["images"] == 3 and report["classes"] == list(SYNTHETIC_CLASSES)
    assert sum(map(sum, report["confusion"])) == 3 * 32 * 32
    # an untrained net (zero score layers) predicts class 0 everywhere
    assert report["iu"][0] == report["pixel_acc"] and report["iu"][1] == 0.0


def test_eval_errors(tmp_path, capsys):
    five = _save(tmp_path / "five.pt", num_classes=5)
    args = ["eval", "--checkpoint", str(five), "--data", "synthetic", "--option", "size=32"]
    assert main(args) == 2
    assert "predicts 5 classes but synthetic has 7" in capsys.readouterr().err
    (tmp_path / "bad.pt").write_bytes(b"\x00" * 100)
    assert main(["eval", "--checkpoint", str(tmp_path / "bad.pt"), "--data", "synthetic"]) == 2
    err = capsys.readouterr().err
    assert "damaged, truncated" in err and err.count("\n") == 1
    good = _save(tmp_path / "good.pt")
    assert main(["eval", "--checkpoint", str(good), "--data", "nonsense"]) == 2
    assert "unknown dataset 'nonsense'" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(good), "--data", "synthetic", "--option", "colour=1"]) == 2  # fmt: skip
    assert "colour" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(good), "--data", "camvid", "--root", str(tmp_path)]) == 2  # fmt: skip
    assert "CamVid" in capsys.readouterr().err


@pytest.mark.parametrize("count", ["0", "-1"])
def test_max_images_below_one_is_refused(tmp_path, count, fcnseg_main, file_hashes, one_line_error):
    """It evaluated nothing and wrote a JSON of empty metrics (issue 13)."""
    path = _save(tmp_path / "best.pt")
    before = file_hashes(tmp_path)
    result = fcnseg_main(
        "eval", "--checkpoint", path, "--data", "synthetic", "--option", "size=32",
        "--workers", "0", "--max-images", count,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"--max-images {count}" in one_line_error(result)
    assert file_hashes(tmp_path) == before


# ------------------------------------------------------------------ per-image scores (issue 14)


@needs_camvid
@pytest.mark.filterwarnings("ignore:.*never occurs")
def test_per_image_csv_scores_each_image_and_lists_the_worst(
    tmp_path, make_checkpoint, fcnseg_main, file_hashes
):
    """Each row's numbers equal the metrics of that image's own confusion matrix (prediction
    by Segmenter, labels as the folder reader reads them); the 5 worst are printed lowest
    first; the user's files are unchanged."""
    data = make_folder_dataset(tmp_path / "data", "index", count=5)
    checkpoint = make_checkpoint(tmp_path / "model.pt", CLASSES)
    before = file_hashes(data)
    out_csv = tmp_path / "scores.csv"
    result = fcnseg_main(
        "eval", "--checkpoint", checkpoint, "--data", "folder", "--root", data, "--split",
        "none", "--workers", "0", "--threads", "1", "--per-image", out_csv,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with out_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:4] == ["image", "path", "pixel_acc", "mean_iu"]
    assert list(rows[0])[4:] == [f"iu_{name}" for name in CLASSES]
    dataset = FolderDataset(data)
    segmenter = Segmenter.from_checkpoint(checkpoint, device="cpu")
    assert [row["image"] for row in rows] == [sample.id for sample in dataset.samples]
    for index, row in enumerate(rows):
        _, label = dataset.load(index)
        image = np.array(Image.open(dataset.samples[index].image))
        predicted = torch.as_tensor(segmenter.predict(image))
        matrix = ConfusionMatrix(len(CLASSES))
        matrix.update(predicted, label)
        expected = metrics_from_matrix(matrix.matrix)
        assert float(row["pixel_acc"]) == pytest.approx(expected["pixel_acc"], abs=1e-5)
        assert float(row["mean_iu"]) == pytest.approx(expected["mean_iu"], abs=1e-5)
        for name, iu in zip(CLASSES, expected["iu"], strict=True):
            assert row[f"iu_{name}"] == ("" if math.isnan(iu) else f"{iu:.6f}")
    worst = sorted(rows, key=lambda row: float(row["mean_iu"]))[:5]
    printed = result.stdout.split("the 5 worst images by mean IU")[1].splitlines()[3:8]
    assert [line.split()[0] for line in printed] == [row["path"] for row in worst]
    assert file_hashes(data) == before


def test_per_image_into_a_missing_folder_is_one_line(tmp_path, fcnseg_main, one_line_error):
    checkpoint = _save(tmp_path / "best.pt")
    result = fcnseg_main(
        "eval", "--checkpoint", checkpoint, "--data", "synthetic", "--option", "size=32",
        "--per-image", tmp_path / "missing" / "scores.csv",
    )  # fmt: skip
    assert result.returncode == 2
    assert "the folder" in one_line_error(result) and "does not exist" in result.stderr
    assert not (tmp_path / "missing").exists()
