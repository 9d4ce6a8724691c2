"""The fcnseg command line."""

import logging
import os
import subprocess
import sys

import pytest
import torch

import fcnseg
from fcnseg.cli import main
from fcnseg.data import SYNTHETIC_CLASSES


def test_models_lists_every_model(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in fcnseg.list_models():
        assert name in out
    line = next(row for row in out.splitlines() if row.startswith("fcn8s_vgg16 "))
    assert "134.49M" in line and "pool4, pool3" in line and " 8 " in line
    assert "image 3" in line and "semantic 21" in line
    rgbd = next(row for row in out.splitlines() if row.startswith("fcn32s_vgg16_rgbd "))
    assert "color 3 + depth 1 (early)" in rgbd
    two = next(row for row in out.splitlines() if row.startswith("fcn16s_vgg16_siftflow "))
    assert "semantic 33, geometric 3" in two


def test_models_rejects_bad_class_count(capsys):
    assert main(["models", "--num-classes", "0"]) == 2
    assert "--num-classes must be at least 1" in capsys.readouterr().err


def test_a_command_run_in_process_leaves_the_process_as_it_found_it(
    tmp_path, fcnseg_main, make_checkpoint
):
    """fcnseg_main stands in for a process: what the command sets (its --threads) must not
    reach the tests after it."""
    checkpoint = make_checkpoint(tmp_path / "best.pt", SYNTHETIC_CLASSES)
    root = logging.getLogger()
    before = torch.get_num_threads(), os.getcwd(), dict(os.environ), list(root.handlers)
    threads = before[0] + 1
    result = fcnseg_main("eval", "--checkpoint", checkpoint, "--data", "synthetic", "--option",
                         "size=32", "--max-images", "1", "--workers", "0", "--threads", threads)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "mean IU" in result.stdout
    assert (torch.get_num_threads(), os.getcwd(), dict(os.environ), list(root.handlers)) == before


@pytest.mark.slow
@pytest.mark.subprocess
def test_python_dash_m_runs_the_command_line():
    result = subprocess.run(
        [sys.executable, "-m", "fcnseg", "models"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "fcn8s_vgg16" in result.stdout


def test_version_prints_the_package_version(fcnseg_main):
    result = fcnseg_main("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"fcnseg {fcnseg.__version__}\n"


def test_a_command_line_mistake_is_one_line(fcnseg_main):
    for args, says in [
        (("eval", "--checkpoint", "m.pt", "--data", "camvid", "--tta-scales", "x"), "'x'"),
        (("eval",), "the following arguments are required: --data"),
        (("eval", "--data", "camvid"), "one of the arguments --checkpoint --pretrained is required"),
        (("weights", "inspect"), "required"),
    ]:
        result = fcnseg_main(*args)
        assert result.returncode == 2
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and says in lines[0], result.stderr
        assert "--help' lists the options" in lines[0]


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_an_unknown_device_is_one_line_before_any_work(
    tmp_path, command, fcnseg_main, make_checkpoint, file_hashes, one_line_error
):
    """--device cdua was torch's traceback (predict's after making its output folder)."""
    checkpoint = make_checkpoint(tmp_path / "best.pt", SYNTHETIC_CLASSES)
    reads = {
        "eval": ["--data", "synthetic", "--option", "size=32", "--workers", "0"],
        "predict": [checkpoint, "--out", tmp_path / "masks"],
    }
    before = file_hashes(tmp_path)
    result = fcnseg_main(command, "--checkpoint", checkpoint, *reads[command], "--device", "cdua")
    assert result.returncode == 2
    line = one_line_error(result)
    assert "device 'cdua' is not a device: choose auto, cpu, cuda or cuda:N" in line
    assert file_hashes(tmp_path) == before and not (tmp_path / "masks").exists()


def _onnx_file(path):
    """A valid ONNX model (one Identity node): what fcnseg export writes is one too."""
    onnx = pytest.importorskip("onnx")
    value = {name: onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [1])
             for name in ("x", "y")}  # fmt: skip
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    graph = onnx.helper.make_graph([node], "identity", [value["x"]], [value["y"]])
    onnx.save(onnx.helper.make_model(graph), str(path))
    return path


# What each command reads an ONNX file given as --checkpoint with (outputs in tmp_path).
_ONNX_AS_CHECKPOINT = {
    "eval": ["eval", "--data", "synthetic"],
    "export": ["export", "onnx", "--out", "again.onnx"],
    "quantize": ["quantize", "--data", "synthetic", "--out", "int8.onnx"],
}


@pytest.mark.onnx
@pytest.mark.parametrize("command", sorted(_ONNX_AS_CHECKPOINT))
def test_an_onnx_file_as_checkpoint_is_named_so(
    tmp_path, command, fcnseg_main, file_hashes, one_line_error
):
    """A valid .onnx was called damaged or truncated: say what it is and where it goes."""
    model = _onnx_file(tmp_path / "model.onnx")
    args = [tmp_path / arg if arg.endswith(".onnx") else arg for arg in _ONNX_AS_CHECKPOINT[command]]
    before = file_hashes(tmp_path)
    result = fcnseg_main(*args, "--checkpoint", model)
    assert result.returncode == 2
    line = one_line_error(result)
    assert f"{model} is an ONNX file, not a PyTorch checkpoint" in line
    assert f"fcnseg predict --checkpoint {model}" in line and f"--onnx {model}" in line
    assert "damaged" not in line
    assert file_hashes(tmp_path) == before
