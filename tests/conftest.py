"""Fixtures shared across the test suite."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run the test on one torch thread, then restore the count.

    Tests of many small ops run fastest on one thread and cannot stall waiting for a
    second on a busy machine; the DDP test needs it for the ranks' arithmetic to match a
    single process to the last bit.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _environment() -> dict[str, str]:
    """The test's environment with this checkout's ``src`` first on the import path, so the
    command line runs the code under test and not another installed copy."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONPATH": src + (os.pathsep + path if path else ""),
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture
def cli_environment():
    """The environment ``fcnseg_cli`` runs in, for tests that start processes themselves."""
    return _environment()


@pytest.fixture
def fcnseg_cli():
    """Run ``python -m fcnseg ARGS`` as a user would (``env``: variables to add); the
    CompletedProcess (text) comes back."""

    def run(
        *args: str, env: dict[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "fcnseg", *map(str, args)]
        environment = {**_environment(), **(env or {})}
        return subprocess.run(
            command, env=environment, capture_output=True, text=True, timeout=timeout
        )

    return run


def _file_hashes(*folders: Path) -> dict[Path, str]:
    """sha256 of every file under ``folders``: compare before and after to prove a command
    changed none of the user's files."""
    hashes = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                hashes[path] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    """The single stderr line of a failed command; fails the test on a traceback or more."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def file_hashes():
    """``file_hashes(folder, ...)``: {path: sha256} of every file under the folders."""
    return _file_hashes


@pytest.fixture
def one_line_error():
    """``one_line_error(result)``: the one stderr line of a command, asserted to be one."""
    return _one_line_error


@pytest.fixture
def make_checkpoint():
    """``make_checkpoint(path, classes, model=...)``: an untrained small model saved as a
    checkpoint for ``classes`` (names), its path returned."""
    import fcnseg
    from fcnseg.data import voc_palette

    def make(path: Path, classes, model: str = "fcn32s_efficientnet_lite0") -> Path:
        net = fcnseg.build_model(model, num_classes=len(classes))
        palette = voc_palette(len(classes))
        return fcnseg.save_weights(path, net, classes=list(classes), palette=palette)

    return make
