"""``fcnseg eval``: the four metrics, a per-class table and a JSON file."""

import json

import pytest
import torch

import fcnseg
from fcnseg.cli import main
from fcnseg.data import SYNTHETIC_CLASSES, voc_palette
from fcnseg.engine import checkpoint as ckpt
from fcnseg.modelfile import record_of


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
def test_max_images_below_one_is_refused(tmp_path, count, fcnseg_cli, file_hashes, one_line_error):
    """It evaluated nothing and wrote a JSON of empty metrics (issue 13)."""
    path = _save(tmp_path / "best.pt")
    before = file_hashes(tmp_path)
    result = fcnseg_cli(
        "eval", "--checkpoint", path, "--data", "synthetic", "--option", "size=32",
        "--workers", "0", "--max-images", count,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"--max-images {count}" in one_line_error(result)
    assert file_hashes(tmp_path) == before
