"""Fetch a publisher's archive: resumable, verified, extracted, and atomic.

A download goes to ``<file>.part`` and resumes from its length with an HTTP Range request
(a server that ignores the range restarts it from zero). Only a file whose size and checksum
match is renamed to its final name, so a final name always means a verified file; a
mismatching ``.part`` is deleted, since resuming cannot repair it. Archives are extracted
into a temporary folder next to the destination and moved into place when complete, with a
marker so a second call does nothing.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .base import DatasetError

__all__ = ["Resource", "fetch", "extract", "fetch_and_extract"]

Progress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class Resource:
    """A file a publisher serves: its URL, name on disk, and what verifies it."""

    url: str
    filename: str
    size: int | None = None  # bytes
    md5: str | None = None
    sha256: str | None = None
    archive: bool = True  # extract after download


def _digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _problem(path: Path, resource: Resource) -> str | None:
    """What is wrong with ``path`` as a copy of ``resource``, or None when it verifies."""
    size = path.stat().st_size
    if resource.size is not None and size != resource.size:
        return f"size {size} bytes, expected {resource.size}"
    for algorithm in ("md5", "sha256"):
        expected = getattr(resource, algorithm)
        if expected is not None:
            actual = _digest(path, algorithm)
            if actual != expected.lower():
                return f"{algorithm} {actual}, expected {expected}"
    return None


def _open_url(url: str, offset: int, timeout: float) -> http.client.HTTPResponse | None:
    """The response for ``url`` from byte ``offset``; None when the server says the range is
    past the end (the partial file is already complete)."""
    headers = {"User-Agent": "fcnseg"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            return None
        raise DatasetError(
            f"download of {url} failed: HTTP {error.code} {error.reason}: "
            "check the URL (the publisher may have moved it) and run again"
        ) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DatasetError(
            f"download of {url} failed ({reason}): check your connection and run again"
        ) from None


def _copy(response, part: Path, offset: int, progress: Progress | None, chunk: int) -> None:
    """Write the response body to ``part``, appending when it answers our range."""
    resumed = offset > 0 and response.status == 206
    if resumed and not (response.headers.get("Content-Range") or "").startswith(f"bytes {offset}-"):
        raise DatasetError(
            f"{response.url} answered a resume with the wrong byte range: "
            f"delete {part} and run again"
        )
    done = offset if resumed else 0
    length = response.headers.get("Content-Length")
    expected = int(length) if length is not None else None
    total = done + expected if expected is not None else None
    received = 0
    try:
        with open(part, "ab" if resumed else "wb") as file:
            while block := response.read(chunk):
                file.write(block)
                received += len(block)
                if progress is not None:
                    progress(done + received, total)
    except (OSError, http.client.HTTPException) as error:
        raise DatasetError(
            f"download to {part} interrupted after {done + received} bytes "
            f"({type(error).__name__}): run again to resume"
        ) from None
    if expected is not None and received < expected:
        raise DatasetError(
            f"download to {part} interrupted after {done + received} of {total} bytes: "
            "run again to resume"
        )


def fetch(
    resource: Resource,
    directory: Path | str,
    *,
    progress: Progress | None = None,
    chunk_size: int = 1 << 20,
    timeout: float = 60.0,
) -> Path:
    """Download ``resource`` into ``directory`` (resuming a ``.part``) and verify it."""
    directory = Path(directory).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / resource.filename
    if target.is_file():
        problem = _problem(target, resource)
        if problem is not None:
            raise DatasetError(
                f"{target} exists but does not verify ({problem}): delete it and run again"
            )
        return target
    part = target.with_name(target.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    if resource.size is not None and offset > resource.size:
        part.unlink()
        offset = 0
    if resource.size is None or offset < resource.size:
        response = _open_url(resource.url, offset, timeout)
        if response is not None:
            with response:
                _copy(response, part, offset, progress, chunk_size)
    problem = _problem(part, resource)
    if problem is not None:
        part.unlink()
        raise DatasetError(
            f"download of {resource.url} does not verify ({problem}): "
            "the partial file was removed; run again to download it afresh"
        )
    os.replace(part, target)  # atomic: the final name only ever holds a verified file
    return target


def _safe_tar_members(archive: tarfile.TarFile, path: Path) -> list[tarfile.TarInfo]:
    members = []
    for member in archive.getmembers():
        parts = PurePosixPath(member.name).parts
        if member.name.startswith(("/", "\\")) or ".." in parts:
            raise DatasetError(f"{path} holds an unsafe path {member.name!r}: not extracting it")
        if member.issym() or member.islnk():
            link = PurePosixPath(member.linkname)
            if link.is_absolute() or ".." in link.parts:
                raise DatasetError(
                    f"{path} holds an unsafe link {member.name!r}: not extracting it"
                )
        if member.isfile() or member.isdir() or member.issym() or member.islnk():
            members.append(member)
    return members


def _merge(source: Path, destination: Path) -> None:
    """Move the tree ``source`` into ``destination``, entry by entry, keeping other files."""
    destination.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        target = destination / entry.name
        if entry.is_dir() and not entry.is_symlink() and target.is_dir():
            _merge(entry, target)
        else:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)


def extract(archive: Path | str, directory: Path | str) -> None:
    """Extract a tar (any compression) or zip archive into ``directory``, once."""
    archive, directory = Path(archive), Path(directory)
    marker = directory / f".{archive.name}.extracted"
    if marker.exists():
        return
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", dir=directory))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zipped:
                for name in zipped.namelist():
                    if name.startswith(("/", "\\")) or ".." in PurePosixPath(name).parts:
                        raise DatasetError(
                            f"{archive} holds an unsafe path {name!r}: not extracting it"
                        )
                zipped.extractall(staging)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tarred:
                members = _safe_tar_members(tarred, archive)
                if hasattr(tarfile, "data_filter"):
                    tarred.extractall(staging, members=members, filter="data")
                else:  # Python < 3.11.4: the members were checked above
                    tarred.extractall(staging, members=members)
        else:
            raise DatasetError(f"{archive} is neither a tar nor a zip archive: re-download it")
        _merge(staging, directory)
        marker.touch()
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as error:
        raise DatasetError(
            f"{archive} cannot be extracted ({type(error).__name__}: {error}): "
            "delete it and download it again"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch_and_extract(
    resource: Resource,
    root: Path | str,
    *,
    progress: Progress | None = None,
    timeout: float = 60.0,
) -> Path:
    """Fetch ``resource`` into ``root``, verify it, extract it there if it is an archive."""
    root = Path(root).expanduser()
    path = fetch(resource, root, progress=progress, timeout=timeout)
    if resource.archive:
        extract(path, root)
    return root
