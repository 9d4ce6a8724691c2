"""Where commands write: never over one of their inputs (by name, symlink or hard link), never
two outputs onto one file, and a folder that cannot take the output is found before any work.
A write that fails at the end names the file the user asked for, not a temporary one."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import pytest

from fcnseg.cli import main
from fcnseg.data import SYNTHETIC_CLASSES
from fcnseg.fileio import atomic_write

MODEL = "fcn32s_efficientnet_lite0"


@pytest.fixture
def checkpoint(tmp_path, make_checkpoint) -> Path:
    return make_checkpoint(tmp_path / "best.pt", SYNTHETIC_CLASSES)


def _command(name: str, checkpoint: Path, out: Path) -> list:
    """The command line of ``name`` reading ``checkpoint`` and writing ``out``."""
    reads = {
        "eval": ["eval", "--checkpoint", checkpoint, "--data", "synthetic", "--option",
                 "size=32", "--workers", "0"],
        "export": ["export", "onnx", "--checkpoint", checkpoint, "--no-check"],
        "convert": ["weights", "convert", "torchvision", checkpoint, "--model", MODEL,
                    "--num-classes", str(len(SYNTHETIC_CLASSES))],
        "quantize": ["quantize", "--checkpoint", checkpoint, "--data", "synthetic"],
    }  # fmt: skip
    return [*reads[name], "--out", out]


def _link(kind: str, target: Path) -> Path:
    """``target`` itself, or a new symlink or hard link to it."""
    if kind == "itself":
        return target
    link = target.with_name(f"{kind.replace(' ', '-')}-{target.name}")
    if kind == "symlink":
        link.symlink_to(target.name)
    else:
        os.link(target, link)
    return link


@pytest.mark.parametrize("kind", ["itself", "symlink", "hard link"])
@pytest.mark.parametrize("command", ["eval", "export", "convert"])
def test_an_output_onto_the_input_is_refused(
    tmp_path, checkpoint, command, kind, fcnseg_main, file_hashes, one_line_error
):
    """eval --out X.pt replaced the checkpoint with its JSON; export and convert replaced
    theirs with their output, and all said nothing."""
    out = _link(kind, checkpoint)
    before = file_hashes(tmp_path)
    result = fcnseg_main(*_command(command, checkpoint, out))
    assert result.returncode == 2, result.stderr
    line = one_line_error(result)
    assert f"--out {out} is " in line and str(checkpoint) in line
    assert "name another file for --out" in line
    assert ("under another name" in line) == (kind != "itself")
    assert file_hashes(tmp_path) == before


def test_a_symlinked_checkpoint_is_not_written_through(
    tmp_path, checkpoint, fcnseg_main, file_hashes, one_line_error
):
    link = _link("symlink", checkpoint)
    before = file_hashes(tmp_path)
    result = fcnseg_main(*_command("export", link, checkpoint))
    assert result.returncode == 2 and "under another name" in one_line_error(result)
    assert file_hashes(tmp_path) == before


def test_the_quantize_report_onto_the_checkpoint_is_refused(
    tmp_path, fcnseg_main, make_checkpoint, file_hashes, one_line_error
):
    """quantize writes <out>.json beside its .onnx: a checkpoint named so would be lost."""
    checkpoint = make_checkpoint(tmp_path / "best.json", ["background", "thing"])
    before = file_hashes(tmp_path)
    result = fcnseg_main(*_command("quantize", checkpoint, tmp_path / "best.onnx"))
    assert result.returncode == 2, result.stderr
    line = one_line_error(result)
    assert f"the report of --out {checkpoint} is --checkpoint {checkpoint} itself" in line
    assert file_hashes(tmp_path) == before


def test_two_outputs_onto_one_file_are_refused(
    tmp_path, checkpoint, fcnseg_main, file_hashes, one_line_error
):
    out = tmp_path / "scores.json"
    out.write_text("the user's earlier report\n")
    before = file_hashes(tmp_path)
    result = fcnseg_main(*_command("eval", checkpoint, out), "--per-image", out)
    assert result.returncode == 2, result.stderr
    assert f"--per-image {out} is --out {out} itself" in one_line_error(result)
    assert file_hashes(tmp_path) == before


def _unwritable(tmp_path: Path, where: str) -> Path:
    """An output whose folder takes no file, even for root: a folder that is a regular
    file, or sysfs (read-only for everyone)."""
    if where == "under a file":
        (tmp_path / "notes.txt").write_text("a file, not a folder\n")
        return tmp_path / "notes.txt" / "model.onnx"
    folder = Path("/sys")
    if not sys.platform.startswith("linux") or os.access(folder, os.W_OK) and _takes_files(folder):
        pytest.skip("no folder here refuses new files")
    return folder / "fcnseg-model.onnx"


def _takes_files(folder: Path) -> bool:
    try:
        (folder / ".fcnseg-probe").touch()
    except OSError:
        return False
    (folder / ".fcnseg-probe").unlink()
    return True


@pytest.mark.parametrize(
    "command, where",
    [("export", "under a file"), ("quantize", "under a file"), ("eval", "under a file"),
     ("export", "read-only")],
)  # fmt: skip
def test_an_unwritable_folder_is_found_before_any_work(
    tmp_path, checkpoint, command, where, fcnseg_main, file_hashes, one_line_error
):
    """export and quantize found it only after the whole export, then printed a bare errno
    naming their temporary file."""
    out = _unwritable(tmp_path, where)
    before = file_hashes(tmp_path)
    result = fcnseg_main(*_command(command, checkpoint, out))
    assert result.returncode == 2, result.stderr
    line = one_line_error(result)
    assert f"cannot write {out}" in line and "choose another --out" in line
    assert ".tmp" not in line and ".probe" not in line
    assert "calibrating" not in result.stdout and "wrote" not in result.stdout
    assert file_hashes(tmp_path) == before


def _no_space(path: Path) -> None:
    """What a write onto a full disk raises: the errno and the file being written."""
    raise OSError(errno.ENOSPC, "No space left on device", str(path))


def test_a_full_disk_at_the_end_of_an_export_names_the_target(
    tmp_path, checkpoint, capsys, monkeypatch
):
    """export found a full disk only when writing the graph, and printed a bare errno naming
    its temporary file; the earlier export must survive."""
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the user's earlier export")

    def export_onto_a_full_disk(model, path, **options):
        return atomic_write(path, _no_space)  # the exporter's last step, on a full disk

    monkeypatch.setattr("fcnseg.commands.export.export_onnx", export_onto_a_full_disk)
    assert main([str(item) for item in _command("export", checkpoint, out)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"fcnseg: error: could not write {out} (no space left on the disk): the previous "
        "model.onnx is kept"
    ]
    assert out.read_bytes() == b"the user's earlier export"
    assert sorted(path.name for path in tmp_path.iterdir()) == [checkpoint.name, out.name]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
def test_a_full_disk_at_the_end_of_eval_names_the_report(
    tmp_path, checkpoint, capsys, monkeypatch
):
    """The report was written in place: a full disk left half of it, and the message (or a
    PermissionError's "pass --out") did not say the disk was full."""
    out = tmp_path / "report.json"
    out.write_text("the user's earlier report\n")
    fsync = os.fsync

    def full(handle: int) -> None:  # delayed allocation: the disk is found full at fsync
        if os.readlink(f"/proc/self/fd/{handle}").endswith(".tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(handle)

    monkeypatch.setattr(os, "fsync", full)
    command = [*_command("eval", checkpoint, out), "--option", "num_images=1"]
    assert main([str(item) for item in command]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"fcnseg: error: could not write {out} (no space left on the disk): the previous "
        "report.json is kept"
    ]
    assert out.read_text() == "the user's earlier report\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == [checkpoint.name, out.name]
