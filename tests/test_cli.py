"""The fcnseg command line."""

import subprocess
import sys

import fcnseg
from fcnseg.cli import main


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


def test_python_dash_m_runs_the_command_line():
    result = subprocess.run(
        [sys.executable, "-m", "fcnseg", "models"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "fcn8s_vgg16" in result.stdout


def test_version_prints_the_package_version(fcnseg_cli):
    result = fcnseg_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"fcnseg {fcnseg.__version__}\n"


def test_a_command_line_mistake_is_one_line(fcnseg_cli):
    for args, says in [
        (("eval", "--checkpoint", "m.pt", "--data", "camvid", "--tta-scales", "x"), "'x'"),
        (("eval",), "--checkpoint, --data"),
        (("weights", "inspect"), "required"),
    ]:
        result = fcnseg_cli(*args)
        assert result.returncode == 2
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and says in lines[0], result.stderr
        assert "--help' lists the options" in lines[0]
