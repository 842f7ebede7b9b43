"""Chunk payloads for ``streamproc produce``, streamed: JSON lines, a JSON array or one object.

Memory stays bounded whatever the input size: JSON lines are read one line at a time, a JSON array
is parsed incrementally by ijson (its yajl2 C backend), item by item, and only a bounded
look-ahead is ever held. Which of the three shapes the input has is decided from its first
non-blank line:

1. It starts with ``[`` and parses alone as JSON: a batch on one line. With nothing but blank
   lines after it, it is the whole input (an array document, items numbered from 1); otherwise the
   input is JSON lines whose first line holds an array.
2. It starts with ``[`` and does not parse alone: an array document spread over lines (or one
   line longer than :data:`MAX_LINE_BYTES`), streamed; items are numbered from 1. A syntax error
   ends the reading: the items before it have been read, the rest of the input cannot be, and a
   :class:`BrokenInput` says where.
3. It starts with ``{`` and does not parse alone: one pretty-printed object if the whole input
   (at most :data:`MAX_LINE_BYTES`) parses as one, numbered by its first line; otherwise JSON lines.
4. Anything else: JSON lines, numbered by physical line (blank lines counted, skipped). Each line
   holds one object or an array of them; a line that does not parse is reported and skipped.

What an array document accepts is yajl's JSON: numbers beyond a 64-bit integer or a double, NaN and
Infinity end the reading as malformed (in JSON lines the ``json`` module reads them and the chunk
is rejected alone), and a lone high surrogate escape reads as ``?``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Final, Protocol

import ijson

__all__ = [
    "MAX_LINE_BYTES",
    "BrokenInput",
    "InputRecord",
    "Rejected",
    "read_records",
]

MAX_LINE_BYTES: Final = 16 * 1024 * 1024
"""Longest line read whole (and longest look-ahead). No valid chunk comes near it: the largest
encoded chunk is under 1 MB, and its JSON text at most a few times that."""
_REJECTED_TEXT_CHARS: Final = 200

Rejected = tuple[int, str, str]
"""A line that is not JSON: (line number, its text, reason)."""


class BinaryReader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...

    def readline(self, size: int = -1, /) -> bytes: ...


@dataclass(slots=True)
class InputRecord:
    """One JSON value read from the input, with where it came from.

    Attributes:
        line: Physical line (JSON lines, single object) or 1-based item index (array document).
        value: The parsed JSON value (the caller rejects anything but an object).
        source_text: The text it was read from, when the input had it as one piece.
    """

    line: int
    value: object
    source_text: str | None = None

    @property
    def text(self) -> str:
        """The record as text for the rejects file: its line, or the item as compact JSON."""
        if self.source_text is None:
            self.source_text = json.dumps(self.value)
        return self.source_text


@dataclass(frozen=True, slots=True)
class BrokenInput:
    """The input stops being readable here (a malformed array document): nothing after is read.

    Attributes:
        line: Item index (array document) where the reading stopped.
        reason: What is malformed.
    """

    line: int
    reason: str


class _TextAsBytes:
    """A text stream read as UTF-8 bytes (for in-memory text streams without a buffer)."""

    def __init__(self, text: IO[str]) -> None:
        self._text = text

    def read(self, size: int = -1, /) -> bytes:
        return self._text.read(size).encode("utf-8", "surrogatepass")

    def readline(self, size: int = -1, /) -> bytes:
        return self._text.readline(size).encode("utf-8", "surrogatepass")


class _Chained:
    """Bytes already read, then the rest of a stream: what ijson reads an array document from."""

    def __init__(self, head: bytes, rest: BinaryReader) -> None:
        self._head = head
        self._rest = rest

    def read(self, size: int = -1, /) -> bytes:
        if size == 0:  # ijson probes the type of the stream with read(0)
            return b""
        if self._head:
            head, self._head = self._head, b""
            return head
        return self._rest.read(size)


def binary(stream: IO[str] | IO[bytes] | BinaryReader) -> BinaryReader:
    """The bytes under ``stream``: its ``buffer`` for text files (stdin), else an encoder."""
    if isinstance(stream, io.TextIOBase):
        buffer = getattr(stream, "buffer", None)
        if buffer is not None:
            return buffer  # type: ignore[no-any-return]  # a text file's buffer is binary
        return _TextAsBytes(stream)
    return stream  # type: ignore[return-value]  # binary files satisfy the protocol


class _Lines:
    """Numbered lines of a binary stream, each at most :data:`MAX_LINE_BYTES`, with push-back."""

    def __init__(self, source: BinaryReader) -> None:
        self.source = source
        self.number = 0
        self._pushed: list[tuple[int, bytes, bool]] = []

    def next(self) -> tuple[int, bytes, bool] | None:
        """(number, raw line, complete) or None at the end; ``complete`` False for an over-long
        line, of which only the first :data:`MAX_LINE_BYTES` were read."""
        if self._pushed:
            return self._pushed.pop()
        raw = self.source.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return None
        self.number += 1
        complete = len(raw) <= MAX_LINE_BYTES or raw.endswith(b"\n")
        return self.number, raw, complete

    def push_back(self, *lines: tuple[int, bytes, bool]) -> None:
        self._pushed.extend(reversed(lines))

    def skip_rest_of_line(self) -> None:
        while True:
            piece = self.source.readline(MAX_LINE_BYTES)
            if not piece or piece.endswith(b"\n"):
                return

    def next_non_blank(self) -> tuple[int, bytes, bool] | None:
        while (line := self.next()) is not None:
            if not line[2] or line[1].strip():
                return line
        return None


def read_records(
    stream: IO[str] | IO[bytes] | BinaryReader,
) -> Iterator[InputRecord | Rejected | BrokenInput]:
    """Yield chunk payloads from JSON lines, one JSON array (Trieve batch) or one JSON object.

    See the module documentation for how the shape is told and how records are numbered.
    Unparseable lines are yielded as ``(line, text, reason)`` so the caller reports them and sends
    nothing for them; a malformed array document ends with a :class:`BrokenInput`.

    Args:
        stream: The input, binary or text (text streams are read through their buffer).
    """
    lines = _Lines(binary(stream))
    first = lines.next_non_blank()
    if first is None:
        return
    number, raw, complete = first
    start = raw.lstrip()[:1]
    if start == b"[":
        value = _parse(raw) if complete else _UNPARSED
        if value is _UNPARSED:
            yield from _array_items(_Chained(raw, lines.source))
            return
        following = lines.next_non_blank()
        if following is None and isinstance(value, list):
            for index, item in enumerate(value, start=1):
                yield InputRecord(index, item)
            return
        if following is not None:
            lines.push_back(following)
        lines.push_back(first)
    elif start == b"{" and complete and _parse(raw) is _UNPARSED:
        buffered = [first]
        size = len(raw)
        while size <= MAX_LINE_BYTES:
            line = lines.next()
            if line is None:
                whole = b"".join(piece for _, piece, _ in buffered)
                document = _parse(whole)
                if isinstance(document, dict):
                    yield InputRecord(number, document, whole.strip().decode("utf-8"))
                    return
                break
            buffered.append(line)
            size += len(line[1])
            if not line[2]:
                break
        lines.push_back(*buffered)
    else:
        lines.push_back(first)
    yield from _json_lines(lines)


_UNPARSED: Final[Any] = object()


def _parse(raw: bytes) -> Any:
    """``raw`` parsed as JSON, or ``_UNPARSED``."""
    try:
        return json.loads(raw.decode("utf-8"))
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return _UNPARSED


def _json_lines(lines: _Lines) -> Iterator[InputRecord | Rejected]:
    while (line := lines.next()) is not None:
        number, raw, complete = line
        if not complete:
            lines.skip_rest_of_line()
            preview = raw[:_REJECTED_TEXT_CHARS].decode("utf-8", "replace")
            yield (number, preview, f"line longer than {MAX_LINE_BYTES} bytes (not read whole)")
            continue
        stripped = raw.strip()
        if not stripped:
            continue
        try:
            text = stripped.decode("utf-8")
        except UnicodeDecodeError as exc:
            preview = stripped[:_REJECTED_TEXT_CHARS].decode("utf-8", "replace")
            yield (number, preview, f"malformed JSON: not UTF-8 ({exc.reason} at byte {exc.start})")
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            yield (number, text, f"malformed JSON: {exc.msg} (column {exc.colno})")
            continue
        if isinstance(value, list):
            for item in value:
                yield InputRecord(number, item)
        else:
            yield InputRecord(number, value, text)


def _array_items(source: _Chained) -> Iterator[InputRecord | BrokenInput]:
    count = 0
    try:
        for item in ijson.items(source, "item", use_float=True):
            count += 1
            yield InputRecord(count, item)
    except (ijson.JSONError, ValueError) as exc:  # IncompleteJSONError, UnicodeDecodeError
        problem = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        after = f"after item {count}" if count else "before the first item"
        yield BrokenInput(
            count + 1,
            f"malformed JSON array {after}: {problem}; the rest of the input was not read",
        )
