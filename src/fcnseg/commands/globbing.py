"""Glob patterns over folder trees that hold symbolic links: each real folder walked once,
each real file found once.

``glob.glob(pattern, recursive=True)`` follows a link to a folder wherever it leads: a link
to the folder itself or to its parent repeats the tree below it until the path reaches the
system's limit of 40 links (every image found 41 times), and two such links multiply the
walk without bound. Here a folder is entered once per place in the pattern, known by its
(st_dev, st_ino), and a file by the same identity, whatever the path that reached it.
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import os
from pathlib import Path

__all__ = ["glob_files", "file_identity"]

Identity = tuple[int, int]  # (st_dev, st_ino)


def file_identity(path: Path) -> Identity | None:
    """The real file or folder ``path`` leads to, links followed; None when nothing is
    there. A link that leads back to itself (directly or round a loop of links) raises a
    ValueError naming it: it is no image, and no path through it ends."""
    try:
        status = os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ValueError(
                f"{path} is a symbolic link that leads back to itself: point it at an image "
                "or remove it"
            ) from None
        return None
    return status.st_dev, status.st_ino


def glob_files(pattern: str) -> list[Path]:
    """The files ``pattern`` matches, sorted, each real file once (by the first path, in
    sorted order, that reaches it). Glob syntax as ``glob.glob(recursive=True)``: ``**``
    alone in a part matches any depth of folders, and names starting with a dot match only
    a part that starts with one."""
    parts = Path(pattern).parts
    first = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    root = Path(*parts[:first]) if first else Path()
    if first == len(parts):
        return [root] if _is_file(root) else []
    found: list[Path] = []
    _walk(root, parts[first:], set(), found)
    unique: dict[Identity, Path] = {}
    for path in sorted(found):
        unique.setdefault(file_identity(path), path)
    return list(unique.values())


def _walk(folder: Path, parts: tuple[str, ...], entered: set, found: list[Path]) -> None:
    """Add to ``found`` the files under ``folder`` that match ``parts``. ``entered`` holds
    (folder identity, parts left) of every step taken: a folder reached again by a link
    would only repeat one."""
    identity = file_identity(folder)
    if identity is None or (identity, len(parts)) in entered:
        return
    entered.add((identity, len(parts)))
    part, rest = parts[0], parts[1:]
    if part == "**":
        if rest:
            _walk(folder, rest, entered, found)  # ** as no folder at all
        else:
            found += [path for path in _entries(folder, "*") if _is_file(path)]
        for path in _entries(folder, "*"):
            if path.is_dir():
                _walk(path, parts, entered, found)
        return
    for path in _entries(folder, part):
        if rest and path.is_dir():
            _walk(path, rest, entered, found)
        elif not rest and _is_file(path):
            found.append(path)


def _is_file(path: Path) -> bool:
    """Whether ``path`` leads to a file; a link round a loop raises (``file_identity``), a
    link to nothing is no file."""
    return file_identity(path) is not None and path.is_file()


def _entries(folder: Path, part: str) -> list[Path]:
    """The entries of ``folder`` whose names match ``part``, sorted; hidden ones only for a
    part that starts with a dot, as glob does."""
    if not glob.has_magic(part):
        path = folder / part
        return [path] if os.path.lexists(path) else []
    try:
        names = os.listdir(folder)
    except OSError:
        return []  # unreadable: glob skips it too
    if not part.startswith("."):
        names = [name for name in names if not name.startswith(".")]
    return [folder / name for name in sorted(fnmatch.filter(names, part))]
