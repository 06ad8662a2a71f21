"""Numbered records out of JSON Lines, JSON and parquet files, read as a stream.

Every reader that takes plain data files builds on `iter_records`: it never holds a whole file in memory and it
turns a record it cannot parse into a `SourceRecord` with an error instead of stopping, so that each bad line
reaches the rejects file with its line number. Whatever goes wrong while one record is parsed costs that record
only; what stops a source is a file that cannot be read as a whole (not parquet, a JSON array broken half-way).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from vlmdata.errors import FatalError, unexpected

JSON_LINES_SUFFIXES = (".jsonl", ".ndjson")
JSON_SUFFIXES = (".json",)
PARQUET_SUFFIXES = (".parquet",)
DATA_FILE_SUFFIXES = JSON_LINES_SUFFIXES + JSON_SUFFIXES + PARQUET_SUFFIXES

_BOM = b"\xef\xbb\xbf"
# Parses JSON without turning integers into Python ints, only to find where an item ends.
_INTEGERS_UNREAD = json.JSONDecoder(parse_int=lambda text: None)
_CHUNK_CHARS = 1 << 16
_PARQUET_BATCH_ROWS = 64


@dataclass(frozen=True)
class SourceRecord:
    """One object of a data file, or why it could not be read.

    Attributes:
        key: "<file name>:<position>", stable across runs; the position is the 1-based line number in JSON
            Lines, the 0-based index in a JSON array or a parquet file.
        where: the position in words, for messages: "line 7", "item 3", "row 3".
        value: the object, None when it could not be parsed.
        error: why it could not be parsed, e.g. "line 7: invalid JSON: Expecting value (column 1)".
    """

    key: str
    where: str
    value: dict[str, Any] | None
    error: str | None = None


def iter_records(path: str) -> Iterator[SourceRecord]:
    """Yields the records of a JSON Lines, JSON (an array of objects, or JSON Lines named .json) or parquet file.

    Example:
        >>> for record in iter_records("data/chat.jsonl"):  # doctest: +SKIP
        ...     print(record.key, record.error or sorted(record.value))
        chat.jsonl:1 ['id', 'messages']
        chat.jsonl:3 line 3: invalid JSON: Expecting ',' delimiter (column 12)
    """
    if path.endswith(PARQUET_SUFFIXES):
        yield from _iter_parquet(path)
    elif _holds_json_array(path):
        yield from _iter_json_array(path)
    else:
        yield from _iter_json_lines(path)


def count_records(path: str) -> int:
    """How many records `iter_records` yields for `path` (errors included), without keeping them."""
    if path.endswith(PARQUET_SUFFIXES):
        return open_parquet(path).metadata.num_rows
    if _holds_json_array(path):
        return sum(1 for _ in _iter_json_array(path))
    with _open_binary(path) as file:
        return sum(1 for _ in _text_lines(file))


def iter_files_records(paths: list[str]) -> Iterator[tuple[str, SourceRecord]]:
    """Yields ``(path, record)`` for the records of several files, one file after the other."""
    for path in paths:
        for record in iter_records(path):
            yield path, record


def count_files_records(paths: list[str]) -> int:
    """How many records `iter_files_records` yields."""
    return sum(count_records(path) for path in paths)


def first_record(path: str) -> dict[str, Any] | None:
    """The first object of a JSON or JSON Lines file that parses, None when there is none."""
    return next((record.value for record in iter_records(path) if record.value is not None), None)


def open_parquet(path: str) -> pq.ParquetFile:
    """Opens a parquet file; a file that is not parquet is a problem with the whole source."""
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:  # ArrowInvalid (not parquet at all) is a ValueError
        raise FatalError(f"Cannot read {path} as parquet: {exc}") from exc


def parquet_columns(path: str) -> list[str]:
    """The top-level column names of a parquet file, read from its footer only."""
    return open_parquet(path).schema_arrow.names


def _open_binary(path: str) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise FatalError(f"Cannot open {path}: {exc.strerror}.") from exc


def _holds_json_array(path: str) -> bool:
    """Whether a file is one JSON array; many datasets name JSON Lines files ".json", so the content decides."""
    if path.endswith(JSON_LINES_SUFFIXES):
        return False
    with _open_binary(path) as file:
        head = file.read(4096).removeprefix(_BOM).lstrip()
    return head.startswith(b"[")


def _text_lines(file: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """``(line number, line)`` for every line that is not blank, a leading byte order mark removed.

    Lines are split on bytes rather than decoded text, so that one line that is not UTF-8 spoils only itself.
    """
    for number, raw in enumerate(file, start=1):
        if number == 1:
            raw = raw.removeprefix(_BOM)
        if raw.strip():
            yield number, raw


def _iter_json_lines(path: str) -> Iterator[SourceRecord]:
    name = os.path.basename(path)
    with _open_binary(path) as file:
        for number, raw in _text_lines(file):
            key, where = f"{name}:{number}", f"line {number}"
            value, error = _parse_line(raw)
            yield SourceRecord(key, where, None, f"{where}: {error}") if error else _object_record(key, where, value)


def _parse_line(raw: bytes) -> tuple[Any, str | None]:
    """The value of one JSON line, or why it cannot be read."""
    try:
        return json.loads(raw.decode("utf-8")), None
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 text ({exc.reason})"
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg} (column {exc.colno})"
    except RecursionError:
        return None, "the JSON is nested too deeply to read"
    except ValueError as exc:  # valid JSON that Python cannot hold: an integer of more than 4300 digits
        return None, f"cannot read the JSON: {exc}"
    except Exception as exc:  # one line nobody foresaw must cost that line, not the file
        return None, unexpected(exc)


def _iter_json_array(path: str) -> Iterator[SourceRecord]:
    name = os.path.basename(path)
    for index, value in enumerate(_stream_json_array(path)):
        key, where = f"{name}:{index}", f"item {index}"
        if isinstance(value, _UnreadableItem):
            yield SourceRecord(key, where, None, f"{where}: {value.reason}")
        else:
            yield _object_record(key, where, value)


@dataclass(frozen=True)
class _UnreadableItem:
    """An item of a JSON array that is valid JSON but cannot be held in Python, stepped over."""

    reason: str


def _object_record(key: str, where: str, value: Any) -> SourceRecord:
    if isinstance(value, dict):
        return SourceRecord(key, where, value)
    return SourceRecord(key, where, None, f"{where}: expected a JSON object, found {_json_type(value)}")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else type(value).__name__


def _stream_json_array(path: str) -> Iterator[Any]:
    """Yields the items of a top-level JSON array one at a time, holding roughly one item in memory.

    The standard library has no incremental parser, so the file is read in chunks and each item is decoded
    with `raw_decode` as soon as the buffer holds all of it. A syntax error cannot be stepped over in an
    array (nothing marks where the next item starts), so it ends the source with a FatalError.
    """
    try:
        yield from _array_items(path)
    except UnicodeDecodeError as exc:
        raise FatalError(f"{path} is not UTF-8 text: {exc.reason}.") from exc
    except RecursionError as exc:
        raise FatalError(f"{path} holds JSON nested too deeply to read.") from exc


def _array_items(path: str) -> Iterator[Any]:
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8-sig") as file:
        buffer = _ArrayBuffer(file)
        buffer.expect("[")
        if buffer.peek() == "]":
            return
        index = 0
        while True:
            try:
                item = buffer.decode(decoder)
            except json.JSONDecodeError as exc:
                raise FatalError(f"{path} is not valid JSON: item {index}: {exc.msg}.") from exc
            except ValueError as exc:  # an integer of more than 4300 digits: its end is known, so step over it
                buffer.decode(_INTEGERS_UNREAD)
                item = _UnreadableItem(f"cannot read the JSON: {exc}")
            yield item
            index += 1
            if buffer.peek() == "]":
                return
            buffer.expect(",")


class _ArrayBuffer:
    """The unread part of a JSON array file, refilled from the file as needed."""

    def __init__(self, file):
        self.file = file
        self.text = ""
        self.eof = False

    def fill(self) -> bool:
        chunk = self.file.read(_CHUNK_CHARS)
        self.eof = not chunk
        self.text += chunk
        return bool(chunk)

    def peek(self) -> str:
        """The next character that is not white space ("" at the end of the file)."""
        while True:
            self.text = self.text.lstrip()
            if self.text or not self.fill():
                return self.text[:1]

    def expect(self, char: str) -> None:
        if self.peek() != char:
            found = repr(self.text[:1]) if self.text else "the end of the file"
            raise FatalError(f"{self.file.name} is not a JSON array of objects: expected {char!r}, found {found}.")
        self.text = self.text[1:]

    def decode(self, decoder: json.JSONDecoder) -> Any:
        self.peek()
        while True:
            try:
                value, end = decoder.raw_decode(self.text)
            except json.JSONDecodeError:
                if self.fill():
                    continue
                raise
            # A number or literal cut at the end of the buffer decodes without error; make sure it is whole.
            if end == len(self.text) and not self.eof and self.fill():
                continue
            self.text = self.text[end:]
            return value


def _iter_parquet(path: str) -> Iterator[SourceRecord]:
    name = os.path.basename(path)
    for index, value, error in iter_parquet_rows(path):
        where = f"row {index}"
        yield SourceRecord(f"{name}:{index}", where, value, f"{where}: {error}" if error else None)


def iter_parquet_rows(
    path: str, start: int = 0, stop: int | None = None
) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """Yields ``(row index, row, error)`` for rows ``start <= index < stop``, skipping whole row groups.

    A row group whose pages are corrupt cannot be stepped into, but the footer says how many rows it holds:
    each row not yet yielded comes out with the error instead, so that every row of the file is accounted for.
    """
    parquet = open_parquet(path)
    stop = parquet.metadata.num_rows if stop is None else stop
    first_row = 0
    for group in range(parquet.metadata.num_row_groups):
        group_rows = parquet.metadata.row_group(group).num_rows
        group_start, first_row = first_row, first_row + group_rows
        if first_row > start and group_start < stop:
            yield from _row_group(parquet, group, group_start, group_rows, start, stop)


def _row_group(
    parquet: pq.ParquetFile, group: int, first: int, count: int, start: int, stop: int
) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    index = first
    try:
        for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, row_groups=[group]):
            for row, error in _batch_rows(batch):
                if start <= index < stop:
                    yield index, row, error
                index += 1
    except Exception as exc:  # corrupt pages raise ArrowException or OSError, but decoders raise others too
        error = f"row group {group} cannot be read: {exc}"
        for lost in range(max(index, start), min(first + count, stop)):
            yield lost, None, error


def _batch_rows(batch: pa.RecordBatch) -> list[tuple[dict[str, Any] | None, str | None]]:
    """``(row, error)`` for each row of a batch; a value Python cannot hold (a date past the year 9999) costs
    its row only."""
    try:
        return [(row, None) for row in batch.to_pylist()]
    except Exception:  # some row holds such a value: convert them one by one to find which
        return [_one_row(batch, position) for position in range(batch.num_rows)]


def _one_row(batch: pa.RecordBatch, position: int) -> tuple[dict[str, Any] | None, str | None]:
    try:
        return batch.slice(position, 1).to_pylist()[0], None
    except Exception as exc:
        return None, f"cannot read the row: {type(exc).__name__}: {exc}"
