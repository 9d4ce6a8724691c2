"""Where a command writes, checked before it does any work.

An output must be none of the command's inputs: writing it would destroy what the command
reads, and a symlink or a hard link is the same file under another name. Nor may two
outputs be one file. And the output's folder must take a new file: a read-only or missing
folder found only after an export of minutes would cost the export.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

__all__ = ["check_outputs", "unwritable"]


def check_outputs(outputs: Mapping[str, Path], inputs: Mapping[str, Path | None]) -> None:
    """Refuse, in one line naming the file and the fix, an output that is an input or
    another output, or whose folder cannot take a file. ``outputs`` map the option that
    names each file (``--out``) to its path, ``inputs`` what the user calls each input
    (``--checkpoint``, "the input") to its path, or to ``None`` when it was not given."""
    given = {name: Path(path) for name, path in inputs.items() if path is not None}
    written: dict[str, Path] = {}
    for option, path in outputs.items():
        path = Path(path)
        _check_distinct(option, path, given, "writing it would destroy it")
        _check_distinct(option, path, written, "one output would overwrite the other")
        written[option] = path
        _check_folder(option, path)


def _check_distinct(option: str, path: Path, files: Mapping[str, Path], why: str) -> None:
    for name, other in files.items():
        if _same_file(path, other):
            raise ValueError(
                f"{option} {path} is {_naming(path, other, name)}: {why}; name another file "
                f"for {option}"
            )


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one file: the same device and inode once links are
    followed (``os.path.samefile``), or one path where neither exists yet."""
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return os.path.abspath(a) == os.path.abspath(b)


def _naming(path: Path, source: Path, name: str) -> str:
    """How ``path`` is the file ``source``: itself, or the same file by a link."""
    if os.path.abspath(path) == os.path.abspath(source):
        return f"{name} {source} itself"
    return f"{name} {source} under another name (a symlink or hard link)"


def _check_folder(option: str, path: Path) -> None:
    """The folder of ``path`` exists and takes a file: a probe file is made and removed."""
    folder = path.parent
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder: name the file to write")
    if not folder.is_dir():
        state = "is a file, not a folder" if folder.exists() else "does not exist (create it)"
        raise FileNotFoundError(
            f"cannot write {path}: the folder {folder} {state}; choose another {option}"
        )
    reason = unwritable(folder)
    if reason is not None:
        raise PermissionError(f"cannot write {path} ({reason} in {folder}): choose another {option}")


def unwritable(folder: Path) -> str | None:
    """Why ``folder`` takes no new file (a probe file is made and removed), or ``None``."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".fcnseg-probe-"):
            return None
    except OSError as error:
        return error.strerror or type(error).__name__
