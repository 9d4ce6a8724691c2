"""Dataset problems as the command line reports them (issue 13): one stderr line, no
traceback, whichever process read the file, and the user's files untouched."""

from __future__ import annotations

import pytest

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
    tmp_path, broken_folder, workers, make_checkpoint, fcnseg_cli, file_hashes, one_line_error
):
    checkpoint = make_checkpoint(tmp_path / "model.pt", CLASSES)
    before = file_hashes(broken_folder)
    result = fcnseg_cli(
        "eval", "--checkpoint", checkpoint, "--data", "folder", "--root", broken_folder,
        "--workers", workers, "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_line_error(result)
    assert line.startswith("fcnseg: error: image ") and "b.jpg cannot be decoded" in line
    assert "worker" not in line and "Caught" not in line
    assert file_hashes(broken_folder) == before
