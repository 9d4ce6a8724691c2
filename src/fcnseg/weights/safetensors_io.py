"""safetensors files: weights only, no pickle, with fcnseg's record in the metadata.

A safetensors file is a JSON header (names, dtypes, shapes, byte offsets, and a
``__metadata__`` map of strings to strings) followed by the raw tensor bytes; reading
one cannot run code, and a tensor can be read without reading the others. fcnseg
stores its record there as strings: ``format`` = ``"fcnseg"``, ``model`` (the
registered name), ``num_classes`` (a decimal) and ``normalization`` (a JSON object).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

__all__ = ["save_file", "load_file", "describe", "parse_record"]

FORMAT = "fcnseg"


def _library():
    try:
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import save_file as write
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "safetensors files need the safetensors package: pip install safetensors"
        ) from None
    return SafetensorError, safe_open, write


def save_file(
    path: str | Path, state_dict: Mapping[str, torch.Tensor], record: Mapping[str, object]
) -> None:
    """Write ``state_dict`` with ``record`` (model, num_classes, normalization) as metadata.

    Tensors are copied into their own contiguous memory: safetensors refuses views
    and tensors that share storage (a tied or aliased parameter).
    """
    _, _, write = _library()
    metadata = {"format": FORMAT}
    for key, value in record.items():
        metadata[key] = value if isinstance(value, str) else json.dumps(value)
    tensors = {key: value.detach().cpu().contiguous().clone() for key, value in state_dict.items()}
    write(tensors, str(path), metadata=metadata)


def load_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a safetensors file, and its metadata (empty when it has none)."""
    error_type, safe_open, _ = _library()
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            return {key: handle.get_tensor(key) for key in handle.keys()}, metadata
    except (error_type, OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from None


def describe(path: str | Path) -> tuple[list[tuple[str, tuple[int, ...], str]], dict[str, str]]:
    """(name, shape, dtype) of every tensor, read from the header alone, and the metadata."""
    error_type, safe_open, _ = _library()
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            rows = []
            for key in handle.keys():
                view = handle.get_slice(key)
                rows.append((key, tuple(view.get_shape()), str(view.get_dtype())))
            return rows, dict(handle.metadata() or {})
    except (error_type, OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from None


def parse_record(metadata: Mapping[str, str], path: str | Path) -> dict[str, object]:
    """model, num_classes and normalization (a dict) from fcnseg metadata; {} for others."""
    if metadata.get("format") != FORMAT:
        return {}
    try:
        record: dict[str, object] = {
            "model": metadata["model"],
            "num_classes": int(metadata["num_classes"]),
        }
        for key in ("normalization", "options"):
            if key in metadata:
                record[key] = json.loads(metadata[key])
    except (KeyError, ValueError) as error:
        raise ValueError(f"{path}: malformed fcnseg metadata ({error})") from None
    return record
