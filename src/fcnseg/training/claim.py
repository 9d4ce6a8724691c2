"""One run per run folder: a process claims the folder before it writes anything in it.

Two trainings given the same run name (or two ``--resume`` of one run) would otherwise
interleave their files: the config of one beside the checkpoints of the other. The claim is
an exclusive ``flock`` on ``.lock`` inside the folder, held for the run's life. The kernel
drops it when the process ends, however it ends, so a crashed run leaves nothing locked;
the file itself is removed on release.

Under DDP only rank 0 claims: the other ranks write nothing into the folder.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no claim, as before
    fcntl = None  # type: ignore[assignment]

from ..config import ConfigError

__all__ = ["RunInUseError", "claim_run", "LOCK_NAME"]

LOCK_NAME = ".lock"

_held: dict[Path, int] = {}  # folders this process holds: how many claims share each


class RunInUseError(ConfigError):
    """Another live process holds the run folder."""


@contextlib.contextmanager
def claim_run(folder: Path | str) -> Iterator[Path]:
    """Hold ``folder`` (created if need be) for this process until the block ends, or raise
    ``RunInUseError`` at once when another process holds it. Claims nest within a process
    (the command claims, then the engine it calls). A folder this claim created is removed
    again when nothing was written into it."""
    folder = Path(folder).absolute()
    if folder in _held:
        _held[folder] += 1
        try:
            yield folder
        finally:
            _held[folder] -= 1
        return
    created = _missing_parents(folder)
    descriptor = _lock(folder)
    _held[folder] = 1
    try:
        yield folder
    finally:
        del _held[folder]
        _release(folder, descriptor, created)


def _missing_parents(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing.append(path)
    return missing


def _lock(folder: Path) -> int:
    """The descriptor of ``folder/.lock``, exclusively locked. The lock file is checked to be
    the one at the path once locked: a releasing process may have removed it meanwhile."""
    path = folder / LOCK_NAME
    while True:
        folder.mkdir(parents=True, exist_ok=True)  # race-free: both callers see a folder
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the folder was removed by a releasing claim: again
            continue
        if fcntl is None:
            return descriptor
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(descriptor)
            os.close(descriptor)
            raise RunInUseError(
                f"{folder} is in use by another fcnseg train{owner}: wait for it to end (or "
                "stop it), or give this run another name= or --run-dir"
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(descriptor, 0)
            os.write(descriptor, f"{os.getpid()}\n".encode())
            return descriptor
        os.close(descriptor)


def _read_owner(descriptor: int) -> str:
    """`` (process N)`` from the lock file, or nothing when it does not say yet."""
    text = os.pread(descriptor, 32, 0).decode(errors="replace").strip()
    return f" (process {text})" if text.isdigit() else ""


def _release(folder: Path, descriptor: int, created: list[Path]) -> None:
    """Remove the lock file (still locked, so no one holds it), unlock, and remove the
    folders the claim created if they stayed empty."""
    with contextlib.suppress(FileNotFoundError):
        (folder / LOCK_NAME).unlink()
    os.close(descriptor)
    for path in created:
        try:
            path.rmdir()
        except OSError:  # written into, or claimed again meanwhile: it stays
            break
