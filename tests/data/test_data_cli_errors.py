"""Dataset problems as the command line reports them (issue 13): one stderr line, no
traceback, whichever process read the file, and the user's files untouched."""

from __future__ import annotations

import json
import os
import struct
import zlib

import pytest
from PIL import Image

CLASSES = ["background", "road", "tree"]  # make.folder's classes.txt


@pytest.fixture
def broken_folder(tmp_path, make):
    """make.folder's dataset with images/b.jpg corrupt (the masks, which the reader scans
    when built, are fine: the error comes while a loader reads the images)."""
    root = make.folder(tmp_path / "data")
    (root / "val.txt").write_text("a\nb\n")
    (root / "images" / "b.jpg").write_bytes(b"\xff\xd8 not a whole jpeg")
    return root


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_bad_image_is_one_line_with_or_without_loader_workers(
    tmp_path, broken_folder, workers, make_checkpoint, fcnseg_main, file_hashes, one_line_error
):
    checkpoint = make_checkpoint(tmp_path / "model.pt", CLASSES)
    before = file_hashes(broken_folder)
    result = fcnseg_main(
        "eval", "--checkpoint", checkpoint, "--data", "folder", "--root", broken_folder,
        "--workers", workers, "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_line_error(result)
    assert line.startswith("fcnseg: error: image ") and "b.jpg cannot be decoded" in line
    assert "worker" not in line and "Caught" not in line
    assert file_hashes(broken_folder) == before


def test_split_none_reads_a_flat_folder_in_train_and_eval(
    tmp_path, make, make_checkpoint, fcnseg_main, file_hashes
):
    """The folder reader's flat layout has no split: none says so from the command line."""
    root = make.folder(tmp_path / "data")
    before = file_hashes(root)
    result = fcnseg_main(
        "train", "dataset=folder", f"root={root}", "train_split=none", "val_split=none",
        "model=fcn32s_efficientnet_lite0", "max_iters=1", "batch_size=2", "num_workers=0",
        "threads=1", "overlays=0", "scale_range=none", "jitter=false", "device=cpu",
        f"output={tmp_path / 'runs'}", "--config", _empty_config(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    checkpoint = make_checkpoint(tmp_path / "model.pt", CLASSES)
    result = fcnseg_main(
        "eval", "--checkpoint", checkpoint, "--data", "folder", "--root", root,
        "--split", "none", "--workers", "0", "--device", "cpu", "--out", tmp_path / "m.json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "on folder all images (2 images)" in result.stdout
    assert file_hashes(root) == before


def test_a_missing_split_advises_what_the_command_line_can_do(
    tmp_path, make, make_checkpoint, fcnseg_main, one_line_error
):
    root = make.folder(tmp_path / "data")
    checkpoint = make_checkpoint(tmp_path / "model.pt", CLASSES)
    result = fcnseg_main(
        "eval", "--checkpoint", checkpoint, "--data", "folder", "--root", root, "--workers", "0"
    )
    assert result.returncode == 2
    line = one_line_error(result)
    assert "no split 'val'" in line and "--split none" in line and "split=None" not in line


def test_none_is_refused_for_a_dataset_that_has_splits(
    tmp_path, make, make_checkpoint, fcnseg_main, one_line_error
):
    root = make.camvid(tmp_path)
    checkpoint = make_checkpoint(tmp_path / "model.pt", [str(k) for k in range(11)])
    result = fcnseg_main(
        "eval", "--checkpoint", checkpoint, "--data", "camvid", "--root", root,
        "--split", "none", "--workers", "0",
    )  # fmt: skip
    assert result.returncode == 2
    assert "camvid" in one_line_error(result) and "choose a split" in result.stderr


def _empty_config(tmp_path):
    path = tmp_path / "empty.toml"
    path.write_text("# every key on the command line\n")
    return path


def _eval_all(fcnseg_main, checkpoint, root, *extra):
    """``fcnseg eval`` on every image of a flat folder dataset, in this process's thread."""
    return fcnseg_main(
        "eval", "--checkpoint", checkpoint, "--data", "folder", "--root", root,
        "--split", "none", "--workers", "0", "--device", "cpu", *extra,
    )  # fmt: skip


def test_a_class_named_twice_is_refused_naming_both_lines(
    tmp_path, make, make_checkpoint, fcnseg_main, file_hashes, one_line_error
):
    """Reports and TensorBoard key classes by name: a repeated name would drop a class."""
    root = make.folder(tmp_path / "data")
    (root / "classes.txt").write_text("background\nroad\n# trees\nroad\n")
    checkpoint = make_checkpoint(tmp_path / "model.pt", CLASSES)
    before = file_hashes(root)
    result = _eval_all(fcnseg_main, checkpoint, root)
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_line_error(result)
    assert f"{root / 'classes.txt'} line 4: class 'road' is already named on line 2" in line
    assert "distinct" in line
    assert file_hashes(root) == before


def test_a_classes_file_with_a_byte_order_mark_names_class_0_without_it(
    tmp_path, make, make_checkpoint, fcnseg_main, file_hashes
):
    root = make.folder(tmp_path / "data")
    text = (root / "classes.txt").read_text()
    (root / "classes.txt").write_text(text, encoding="utf-8-sig")  # as Windows editors save
    checkpoint = make_checkpoint(tmp_path / "model.pt", CLASSES)
    before = file_hashes(root)
    report = tmp_path / "metrics.json"
    result = _eval_all(fcnseg_main, checkpoint, root, "--out", report)
    assert result.returncode == 0, result.stderr
    assert json.loads(report.read_text())["classes"] == CLASSES
    assert file_hashes(root) == before


def _write_bomb_png(path):
    """A valid 1-bit PNG of black pixels, a few KB on disk and just over the pixel count
    PIL refuses to decode (twice Image.MAX_IMAGE_PIXELS): a decompression bomb."""
    width = 16384
    height = 2 * Image.MAX_IMAGE_PIXELS // width + 1

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, gray
    rows = bytes(1 + width // 8) * height  # filter byte 0, then the row's bits
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
    path.write_bytes(png + chunk(b"IEND", b""))


def test_a_decompression_bomb_says_it_is_too_large_and_how_to_allow_it(
    tmp_path, make, make_checkpoint, fcnseg_main, file_hashes, one_line_error
):
    root = make.folder(tmp_path / "data")
    (root / "images" / "b.jpg").unlink()
    _write_bomb_png(root / "images" / "b.png")
    checkpoint = make_checkpoint(tmp_path / "model.pt", CLASSES)
    before = file_hashes(root)
    result = _eval_all(fcnseg_main, checkpoint, root, "--out", tmp_path / "metrics.json")
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_line_error(result)
    assert f"image {root / 'images' / 'b.png'} is too large to decode safely" in line
    assert "PIL.Image.MAX_IMAGE_PIXELS = None" in line and "re-download" not in line
    assert file_hashes(root) == before


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_fifo_among_the_masks_is_named_as_no_regular_file(
    tmp_path, make, make_checkpoint, fcnseg_main, file_hashes, one_line_error
):
    root = make.folder(tmp_path / "data")
    (root / "masks" / "b.png").unlink()
    os.mkfifo(root / "masks" / "b.png")
    checkpoint = make_checkpoint(tmp_path / "model.pt", CLASSES)
    before = file_hashes(root)  # regular files only: reading the FIFO would block
    result = _eval_all(fcnseg_main, checkpoint, root, "--out", tmp_path / "metrics.json")
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_line_error(result)
    assert f"mask {root / 'masks' / 'b.png'} is not a regular file but a FIFO" in line
    assert file_hashes(root) == before
