"""Fixtures shared across the test suite."""

import contextlib
import hashlib
import logging
import os
import random
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from slim_models import TINY, TinyVGG, tiny_checkpoint

from fcnseg.cli import main
from fcnseg.models.backbones import BACKBONES

# Fixtures whose tests start a Python process: such a test is marked ``subprocess``.
_PROCESS_FIXTURES = frozenset({"fcnseg_cli", "cli_environment"})

@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Mark ``subprocess`` every test that asks for a process-starting fixture, before
    ``-m`` selects among them."""
    for item in items:
        if _PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.subprocess)


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


# What a fresh interpreter shows of warnings (Python's default filters); pytest's own filters
# would let library deprecations through as extra "fcnseg: warning:" lines.
_INTERPRETER_WARNINGS = (
    ("default", DeprecationWarning, "__main__"),
    ("ignore", DeprecationWarning, None),
    ("ignore", PendingDeprecationWarning, None),
    ("ignore", ImportWarning, None),
    ("ignore", ResourceWarning, None),
)


@contextlib.contextmanager
def _process_state_kept():
    """Give back what a command may change in the process it runs in: torch's thread count
    and random state, numpy's and Python's random state, the working folder, the
    environment and the root logger, so that no later test sees a command ran before it."""
    threads, cwd, environment = torch.get_num_threads(), os.getcwd(), dict(os.environ)
    states = torch.random.get_rng_state(), np.random.get_state(), random.getstate()
    root = logging.getLogger()
    handlers, filters, level = list(root.handlers), list(root.filters), root.level
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.random.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(environment)
        root.handlers[:], root.filters[:] = handlers, filters
        root.setLevel(level)


def _exit_status(stop: SystemExit) -> int:
    """The status a process ends with on ``SystemExit`` (argparse's errors, ``--version``)."""
    if stop.code is None:
        return 0
    return stop.code if isinstance(stop.code, int) else 1


@pytest.fixture
def fcnseg_main(capfd):
    """Run ``fcnseg ARGS`` through ``fcnseg.cli.main`` in this process, on one thread as
    ``fcnseg_cli`` runs it; a CompletedProcess (text) with its exit status and what it wrote
    to file descriptors 1 and 2 comes back. For tests of what a command says and writes: a
    process start costs seconds, and signals, a real exit or what a fresh interpreter
    prints need ``fcnseg_cli``."""

    def run(*args: str) -> subprocess.CompletedProcess:
        argv = [str(arg) for arg in args]
        before = capfd.readouterr()  # the test's own output, given back below
        with _process_state_kept(), warnings.catch_warnings():
            warnings.resetwarnings()
            for action, category, module in reversed(_INTERPRETER_WARNINGS):
                warnings.filterwarnings(action, category=category, module=module or "")
            torch.set_num_threads(1)
            try:
                status = main(argv)
            except SystemExit as stop:
                status = _exit_status(stop)
        output = capfd.readouterr()
        sys.stdout.write(before.out)
        sys.stderr.write(before.err)
        return subprocess.CompletedProcess(["fcnseg", *argv], status, output.out, output.err)

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


@pytest.fixture(scope="session")
def tiny_vgg_file(tmp_path_factory):
    """``tiny_vgg_file(classes=5)``: the plain tiny VGG16 net (``slim_models.TINY``) with
    random score layers, saved once a session per class count. Tests read it and do not
    write it; ONNX engines export it once into the cache beside it, for every test file
    that runs it (an export takes seconds). Run it with ``TINY`` registered."""
    files: dict[int, Path] = {}

    def get(classes: int = 5) -> Path:
        if classes not in files:
            folder = tmp_path_factory.mktemp(f"tiny_vgg_{classes}")
            with pytest.MonkeyPatch.context() as patch:
                patch.setitem(BACKBONES, TINY, TinyVGG)
                files[classes] = tiny_checkpoint(folder / "model.pt", classes=classes)
        return files[classes]

    return get
