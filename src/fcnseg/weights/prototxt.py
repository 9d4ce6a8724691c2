"""A parser for the protobuf text format of Caffe's .prototxt net definitions.

The text format (https://protobuf.dev/reference/protobuf/textformat-spec/) is a list of
fields: ``key: value`` for scalars and ``key { ... }`` (or ``key < ... >``) for
messages, with ``#`` comments and optional ``;`` / ``,`` separators. Without a schema a
repeated field cannot be told from a single one, so a key seen once maps to its value
and a key seen again (or given a ``[a, b]`` list) maps to the list of all its values;
``repeated`` reads either shape as a list. Identifiers (enum values such as ``MAX`` or
``CONVOLUTION``) become strings, ``true`` / ``false`` booleans, numbers ints or floats.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .protowire import CaffeFormatError

__all__ = ["PrototxtError", "parse_prototxt", "read_prototxt", "repeated"]

MAX_NESTING = 64  # Caffe nets nest 3-4 levels; a bound keeps hostile input off the C stack

_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\f\v]+|\#[^\n]*)
  | (?P<newline>\n)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?[fF]?)(?![\w.]))
  | (?P<ident>-?[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[{}<>:;,\[\]])
    """,
    re.VERBOSE,
)
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{1,2}|[0-7]{1,3}|.)", re.DOTALL)
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}
_CLOSE = {"{": "}", "<": ">"}


class PrototxtError(CaffeFormatError):
    """A .prototxt that is not well-formed text format; the message names file and line."""


def _unescape(match: re.Match[str]) -> str:
    code = match.group(1)
    if code[0] == "x":
        return chr(int(code[1:], 16))
    if code[0] in "01234567":
        return chr(int(code, 8))
    return _SIMPLE_ESCAPES.get(code, code)


def _tokenize(text: str, source: str) -> list[tuple[str, str, int]]:
    """(kind, text, line) for every token; whitespace and comments dropped."""
    tokens, pos, line = [], 0, 1
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise PrototxtError(f"{source}:{line}: unexpected character {text[pos]!r}")
        kind = match.lastgroup
        if kind == "newline":
            line += 1
        elif kind != "space":
            tokens.append((kind, match.group(), line))
        pos = match.end()
    tokens.append(("end", "", line))
    return tokens


class _Parser:
    def __init__(self, tokens: list[tuple[str, str, int]], source: str) -> None:
        self.tokens, self.source, self.pos = tokens, source, 0

    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.pos]

    def error(self, expected: str) -> PrototxtError:
        kind, text, line = self.peek()
        found = "end of file" if kind == "end" else repr(text)
        return PrototxtError(f"{self.source}:{line}: expected {expected}, found {found}")

    def take(self, text: str) -> bool:
        if self.peek()[1] == text and self.peek()[0] == "punct":
            self.pos += 1
            return True
        return False

    def message(self, close: str, depth: int) -> dict[str, Any]:
        """Fields up to ``close`` ("" for end of file)."""
        if depth > MAX_NESTING:
            raise self.error(f"at most {MAX_NESTING} nested messages")
        fields: dict[str, Any] = {}
        while not (self.take(close) if close else self.peek()[0] == "end"):
            kind, key, _ = self.peek()
            if kind != "ident" or key.startswith("-"):
                raise self.error(f"a field name or {close!r}" if close else "a field name")
            self.pos += 1
            _add(fields, key, self.field_value(depth))
            if not self.take(";"):
                self.take(",")
        return fields

    def field_value(self, depth: int) -> Any:
        colon = self.take(":")
        for opening, closing in _CLOSE.items():
            if self.take(opening):
                return self.message(closing, depth + 1)
        if not colon:
            raise self.error("':' or '{'")
        if self.take("["):
            return self.list_value(depth)
        return self.scalar()

    def list_value(self, depth: int) -> list[Any]:
        values: list[Any] = []
        while not self.take("]"):
            if values and not self.take(","):
                raise self.error("',' or ']'")
            opening = next((o for o in _CLOSE if self.take(o)), None)
            values.append(self.message(_CLOSE[opening], depth + 1) if opening else self.scalar())
        return values

    def scalar(self) -> Any:
        kind, text, _ = self.peek()
        if kind == "string":
            parts = []
            while self.peek()[0] == "string":  # adjacent literals concatenate, as in C
                parts.append(_ESCAPE.sub(_unescape, self.peek()[1][1:-1]))
                self.pos += 1
            return "".join(parts)
        if kind == "number":
            self.pos += 1
            return _number(text)
        value = _identifier(text) if kind == "ident" else None
        if value is None:
            raise self.error("a value")
        self.pos += 1
        return value


def _number(text: str) -> int | float:
    body = text.lstrip("+-")
    if body[:2] in ("0x", "0X"):
        value = int(body, 16)
        return -value if text.startswith("-") else value
    if re.fullmatch(r"\d+", body):
        return int(text)
    return float(text.rstrip("fF"))


def _identifier(text: str) -> bool | float | str | None:
    """An identifier's value: bool, inf / nan, or an enum name (None if malformed)."""
    lowered = text.lower()
    if lowered in ("true", "t"):
        return True
    if lowered in ("false", "f"):
        return False
    if lowered.lstrip("-") in ("inf", "infinity", "nan"):
        return float(lowered)
    return None if text.startswith("-") else text


def _add(fields: dict[str, Any], key: str, value: Any) -> None:
    """Store ``value``; a repeated key (or a ``[...]`` list) collects into one list."""
    values = value if isinstance(value, list) else [value]
    if key in fields:
        previous = fields[key]
        fields[key] = (previous if isinstance(previous, list) else [previous]) + values
    else:
        fields[key] = value


def parse_prototxt(text: str, *, source: str = "<prototxt>") -> dict[str, Any]:
    """Parse text-format ``text`` into nested dicts; ``source`` names it in errors."""
    return _Parser(_tokenize(text, source), source).message("", 0)


def read_prototxt(path: str | Path) -> dict[str, Any]:
    """Read a Caffe .prototxt (net or solver definition) into nested dicts."""
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PrototxtError(
            f"{path}: not UTF-8 text at byte {err.start}; a binary .caffemodel is read "
            "with read_caffemodel"
        ) from None
    return parse_prototxt(text, source=str(path))


def repeated(message: dict[str, Any], key: str) -> list[Any]:
    """``message[key]`` as a list: [] when absent, [value] when the key appeared once."""
    value = message.get(key)
    if value is None:
        return []
    return value if isinstance(value, list) else [value]
