"""A minimal, bounded decoder for the protobuf binary wire format.

Caffe stores trained nets as one serialised ``NetParameter`` message. Reading it needs
only the wire format (https://protobuf.dev/programming-guides/encoding/): every field
is a varint tag ``(number << 3) | wire_type`` followed by a varint (type 0), 8 bytes
(type 1), a varint length and that many bytes (type 2) or 4 bytes (type 5). The schema
lives in the caller (``caffe.py``); this module only splits bytes into fields.

Untrusted input is the normal case (a truncated download, a file of another kind), so
every length is checked against the bytes that remain before anything is sliced, no
array is larger than the slice it views, nested messages are limited in depth, and
every failure is one ``CaffeFormatError``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CaffeFormatError",
    "Field",
    "MAX_DEPTH",
    "VARINT",
    "FIXED64",
    "LENGTH",
    "FIXED32",
    "read_varint",
    "iter_fields",
    "to_int64",
    "packed_varints",
    "RepeatedNumbers",
]

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5  # wire types 3/4 (groups) are not used by Caffe
MAX_DEPTH = 16  # NetParameter > LayerParameter > BlobProto > BlobShape is depth 3
_MAX_VARINT_BYTES = 10  # 64 bits in 7-bit groups


class CaffeFormatError(ValueError):
    """The bytes are not a well-formed protobuf message of the expected kind."""


@dataclass(frozen=True)
class Field:
    """One decoded field: an int for varint / fixed types, a view for length-delimited."""

    number: int
    wire_type: int
    value: int | memoryview


def read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    """Decode the varint at ``pos``; return it (unsigned, < 2**64) and the next position."""
    result = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos + i >= len(buf):
            raise CaffeFormatError(f"truncated varint at byte {pos}")
        byte = buf[pos + i]
        result |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            if result >= 1 << 64:
                raise CaffeFormatError(f"varint at byte {pos} exceeds 64 bits")
            return result, pos + i + 1
    raise CaffeFormatError(f"varint at byte {pos} is longer than {_MAX_VARINT_BYTES} bytes")


def to_int64(value: int) -> int:
    """Reinterpret an unsigned 64-bit varint as the signed int32/int64 it encodes."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _take(buf: memoryview, pos: int, size: int, what: str) -> memoryview:
    """The ``size`` bytes at ``pos``, after checking they exist (never over-allocates)."""
    if size > len(buf) - pos:
        raise CaffeFormatError(
            f"{what} at byte {pos} claims {size} bytes but only {len(buf) - pos} remain"
        )
    return buf[pos : pos + size]


def _read_field(buf: memoryview, pos: int) -> tuple[Field, int]:
    tag, pos = read_varint(buf, pos)
    number, wire_type = tag >> 3, tag & 7
    if number == 0 or number >= 1 << 29:
        raise CaffeFormatError(f"invalid field number {number} before byte {pos}")
    if wire_type == VARINT:
        value, pos = read_varint(buf, pos)
        return Field(number, wire_type, value), pos
    if wire_type in (FIXED64, FIXED32):
        size = 8 if wire_type == FIXED64 else 4
        raw = _take(buf, pos, size, f"fixed field {number}")
        return Field(number, wire_type, int.from_bytes(raw, "little")), pos + size
    if wire_type == LENGTH:
        size, pos = read_varint(buf, pos)
        return Field(number, wire_type, _take(buf, pos, size, f"field {number}")), pos + size
    raise CaffeFormatError(f"unsupported wire type {wire_type} for field {number}")


def iter_fields(data: bytes | memoryview, *, depth: int = 0) -> Iterator[Field]:
    """Yield the fields of one message in file order (repeated fields appear repeatedly).

    ``depth`` is how deeply this message is nested; callers pass ``depth + 1`` for
    sub-messages so a hostile file cannot recurse without bound.
    """
    if depth > MAX_DEPTH:
        raise CaffeFormatError(f"messages nested deeper than {MAX_DEPTH} levels")
    buf = data if isinstance(data, memoryview) else memoryview(data)
    pos = 0
    while pos < len(buf):
        item, pos = _read_field(buf, pos)
        yield item


def packed_varints(view: memoryview) -> list[int]:
    """The unsigned varints of a packed repeated integer field."""
    values, pos = [], 0
    while pos < len(view):
        value, pos = read_varint(view, pos)
        values.append(value)
    return values


class RepeatedNumbers:
    """A ``repeated float`` / ``repeated double`` field gathered in file order.

    Writers may emit the field packed (one length-delimited chunk), unpacked (one fixed
    field per value), or both; protobuf concatenates all occurrences.
    """

    def __init__(self, dtype: str) -> None:
        self.dtype = dtype  # "<f4" or "<f8"
        self._chunks: list[np.ndarray] = []
        self._loose: list[int] = []  # raw bits of unpacked values, not yet flushed

    def add(self, item: Field) -> None:
        fixed = FIXED32 if self.dtype == "<f4" else FIXED64
        if item.wire_type == LENGTH:
            self._flush()
            self._chunks.append(_packed(item.value, self.dtype, f"field {item.number}"))
        elif item.wire_type == fixed:
            self._loose.append(item.value)
        else:
            raise CaffeFormatError(f"field {item.number} has wire type {item.wire_type}")

    def _flush(self) -> None:
        if self._loose:
            bits = np.array(self._loose, dtype="<u4" if self.dtype == "<f4" else "<u8")
            self._chunks.append(bits.view(self.dtype).astype(self.dtype[1:]))
            self._loose = []

    def array(self) -> np.ndarray:
        self._flush()
        if not self._chunks:
            return np.zeros(0, dtype=self.dtype[1:])
        return self._chunks[0] if len(self._chunks) == 1 else np.concatenate(self._chunks)


def _packed(view: memoryview, dtype: str, what: str) -> np.ndarray:
    size = np.dtype(dtype).itemsize
    if len(view) % size:
        raise CaffeFormatError(f"packed {what} of {len(view)} bytes is not a multiple of {size}")
    # frombuffer views the slice (bounded by the input); astype makes an owned native copy
    return np.frombuffer(view, dtype=dtype).astype(dtype[1:])
