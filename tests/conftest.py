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

# Marks of tests in files that other changes are rewriting now (the training engine's
# hooks, the config package): named here by file and test function until they can move
# into the files as decorators. A name with [...] marks that case alone.
_MARKS_BY_NAME: dict[str, dict[str, tuple[str, ...]]] = {
    "test_budget.py": {
        "test_a_budgeted_run_plans_its_length_and_ends_inside_the_budget": ("slow",),
        "test_a_run_that_slows_down_after_the_probe_is_planned_again_and_ends_its_schedule": (
            "slow",
        ),
    },
    "test_checkpointing.py": {
        "test_checkpointing_changes_no_number[fcn8s_vgg16]": ("slow",),
        "test_checkpointing_changes_no_number[fcn32s_alexnet]": ("slow",),
    },
    "test_commands_train_folder.py": {
        "test_a_crop_larger_than_every_image_is_one_warning": ("slow",),
        "test_init_from_another_class_count_starts_the_score_layers_anew": ("slow",),
        "test_train_without_config_on_a_flat_folder": ("slow",),
    },
    "test_engine_distributed.py": {
        "test_two_gloo_processes_give_the_metrics_of_one": ("slow", "ddp", "subprocess"),
        "test_a_frozen_rank_ends_the_other_in_one_line_after_ddp_timeout_seconds": ("slow", "ddp"),
        "test_a_rank_that_never_joins_is_named_after_ddp_timeout_seconds": ("slow", "ddp"),
    },
    "test_engine_faults.py": {
        "test_a_crashed_run_leaves_its_folder_free": ("slow",),
        "test_a_run_folder_held_by_a_live_run_is_refused_in_one_line": ("slow",),
        "test_ctrl_c_stops_at_a_step_saves_and_says_how_to_resume": ("slow",),
        "test_every_command_that_reads_a_checkpoint_refuses_a_damaged_one_in_one_line": ("slow",),
        "test_two_trainings_of_one_name_started_together_one_trains": ("slow",),
    },
    "test_engine_resume.py": {
        "test_killed_and_resumed_run_ends_with_the_same_weights": ("slow", "subprocess"),
    },
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Mark tests before ``-m`` selects among them: ``subprocess`` on every test that asks
    for a process-starting fixture, and the marks of ``_MARKS_BY_NAME``."""
    for item in items:
        if _PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.subprocess)
        named = _MARKS_BY_NAME.get(item.path.name, {})
        function = getattr(item, "originalname", item.name)
        for mark in sorted({*named.get(function, ()), *named.get(item.name, ())}):
            item.add_marker(getattr(pytest.mark, mark))
    _warn_of_unknown_names(items)


def _warn_of_unknown_names(items) -> None:
    """A test renamed or removed in a file of ``_MARKS_BY_NAME`` would silently lose its
    marks (a slow test back in the daily loop): name it."""
    modules = {item.path.name: item.module for item in items if hasattr(item, "module")}
    for file, tests in _MARKS_BY_NAME.items():
        module = modules.get(file)
        for name in sorted(tests):
            if module is not None and not hasattr(module, name.partition("[")[0]):
                warnings.warn(
                    f"tests/conftest.py marks {file}::{name}, which the file no longer has: "
                    "move its marks to the test that replaced it",
                    pytest.PytestWarning,
                    stacklevel=1,
                )


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
