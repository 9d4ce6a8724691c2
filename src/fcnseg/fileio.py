"""Files in and out, safely: one atomic writer, one reader of torch and safetensors files.

Every file fcnseg writes goes to a temporary name beside the target, is flushed and fsynced,
then moved over the target with ``os.replace``, and the folder is fsynced: a crash (even
SIGKILL or power loss) leaves the old file or the new one, never half of one.

Reading a torch file uses ``torch.load(weights_only=True)``, so a file can never run code;
every failure is one ``FileFormatError`` line that names the file and says what it is not.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

__all__ = [
    "FileFormatError",
    "atomic_write",
    "file_digest",
    "read_torch_file",
    "check_archive",
    "read_safetensors",
    "write_safetensors",
    "tensors_only",
    "read_state_dict",
    "SAFETENSORS_SUFFIX",
]

SAFETENSORS_SUFFIX = ".safetensors"
# What zipfile raises on an archive it cannot read through (besides a failed CRC).
_ARCHIVE_ERRORS = (
    zipfile.BadZipFile,
    OSError,
    EOFError,
    RuntimeError,
    NotImplementedError,
    zlib.error,
)


class FileFormatError(ValueError):
    """A file cannot be read as what it should be; the message names it and the fix."""


def file_digest(path: Path | str) -> str:
    """The sha256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(temporary_path)``, then move the result onto ``path`` in one step.

    The file gets the permissions ``open()`` would give it (not mkstemp's private ones);
    on any failure the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: the folder {path.parent} does not exist; create it")
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX: the directory entry lives in the folder)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:  # not every platform opens folders
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def read_torch_file(path: str | Path, what: str = "weights file") -> Any:
    """``torch.load`` of ``path`` with weights only; every failure is one line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found: check the path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if _names_code(error):
            raise FileFormatError(
                f"{what} {path} refused: loading it would run code named inside the file "
                f"({_offending_global(error)}), and fcnseg loads only tensors and plain data "
                "(torch.load weights_only=True). Re-save it from fcnseg, or if you trust its "
                "author, load it yourself and save its state_dict"
            ) from None
        raise FileFormatError(_unreadable(path, what, error)) from None
    except Exception as error:  # torch raises many types for damaged files
        raise FileFormatError(_unreadable(path, what, error)) from None


def check_archive(path: str | Path, what: str = "weights file") -> None:
    """Check the CRC-32 that a ``torch.save`` archive keeps for each of its entries.

    ``torch.load`` does not check them, so one flipped byte in a tensor's storage loads as a
    wrong weight (a 5e37 among values near 0.01). Files with fcnseg's own checksum need no
    second read; the others (fcnseg 0.1 files, bare state dicts) get this one. Entries are
    read in chunks, so memory does not grow with the file. A file in torch's legacy
    (pre-zip) format has no CRCs to check.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except _ARCHIVE_ERRORS as error:
        raise FileFormatError(_unreadable(path, what, error)) from None
    if damaged is not None:
        raise FileFormatError(
            f"{what} {path} is damaged: its entry {damaged} no longer matches the CRC-32 "
            "written with it, so its bytes changed after it was saved; use another copy "
            "(a run folder keeps last.pt and best.pt)"
        )


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a safetensors file; every failure is one line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found: check the path")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            return {key: handle.get_tensor(key) for key in handle.keys()}, metadata
    except (SafetensorError, OSError, ValueError) as error:
        raise FileFormatError(f"{path}: not a readable safetensors file ({error})") from None


def write_safetensors(
    path: str | Path, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> None:
    """Write ``state_dict`` with string ``metadata`` (not atomically: see ``atomic_write``).

    Tensors are copied into their own contiguous memory: safetensors refuses views and
    tensors that share storage (a tied or aliased parameter).
    """
    tensors = {key: value.detach().cpu().contiguous().clone() for key, value in state_dict.items()}
    save_file(tensors, str(path), metadata=dict(metadata))


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a .pt/.pth/.bin or .safetensors file: a bare one, or one under
    ``state_dict`` (fcnseg, Lightning) or ``model`` (torchvision's reference scripts). A
    ``module.`` prefix on every key (saved inside DistributedDataParallel) is removed."""
    path = Path(path)
    if path.suffix == SAFETENSORS_SUFFIX:
        state = read_safetensors(path)[0]
    else:
        loaded = read_torch_file(path)
        state = next(
            (c for c in (loaded, *_nested(loaded)) if tensors_only(c) and c), None
        )
        if state is None:
            raise FileFormatError(
                f"{path}: no state dict found (expected a mapping of names to tensors, or one "
                "under 'state_dict' or 'model')"
            )
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return dict(state)


def _nested(loaded: Any) -> list[Any]:
    return [loaded.get(key) for key in ("state_dict", "model")] if isinstance(loaded, dict) else []


def tensors_only(mapping: object) -> bool:
    """Whether ``mapping`` is a state dict: names to tensors."""
    return isinstance(mapping, Mapping) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in mapping.items()
    )


def _unreadable(path: Path, what: str, error: BaseException) -> str:
    return (
        f"{what} {path} is damaged, truncated or not a PyTorch file ({_detail(path, error)}): "
        "use another copy (a run folder keeps last.pt and best.pt)"
    )


def _detail(path: Path, error: BaseException) -> str:
    """Why ``torch.load`` failed, in words that fit the file. For a file that is no
    ``torch.save`` archive at all torch's own first line advises ``weights_only=False``,
    which would run code from the file: say what the file is not instead."""
    if not zipfile.is_zipfile(path):
        return "not a zip archive, as torch.save writes"
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__


def _names_code(error: BaseException) -> bool:
    """Whether weights-only unpickling stopped at a Python object to import or call (rather
    than at bytes that are no pickle at all)."""
    text = str(error)
    detail = text.split("WeightsUnpickler error:", 1)[-1].lower()
    return "weights only" in text.lower() and any(
        word in detail for word in ("global", "class", "reduce", "build", "persistent")
    )


def _offending_global(error: BaseException) -> str:
    match = re.search(r"GLOBAL ([\w.]+)", str(error))
    return f"it names {match.group(1)}" if match else "it holds a pickled Python object"
