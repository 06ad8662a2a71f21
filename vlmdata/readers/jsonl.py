"""Conversations already in the extended OpenAI message format, one JSON object per line.

Each object holds a list of ``{role, content}`` messages (under "messages" or the `--field-messages` column) and,
optionally, an "images"/"image" and "audios"/"audio" column::

    {"id": "r1", "messages": [{"role": "user", "content": [{"type": "image", "path": "media/cat.jpg"},
                                                          {"type": "text", "text": "What is this?"}]},
                              {"role": "assistant", "content": "A cat."}]}

Content is passed on as it is; the schema stage normalises it. A ``.json`` file holding one array of such
objects is read too, item by item.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

from vlmdata.readers.files import list_data_files
from vlmdata.readers.guard import guarded_row
from vlmdata.readers.options import ReaderOptions
from vlmdata.readers.records import DATA_FILE_SUFFIXES, SourceRecord, count_files_records, iter_files_records
from vlmdata.readers.split import parse_split, take_slice
from vlmdata.rows import RawRow

DEFAULT_FIELD = "messages"


def read_jsonl(source: str, options: ReaderOptions = ReaderOptions()) -> Iterator[RawRow]:
    """Yields one row per object of a JSON Lines / JSON file, or of every such file in a folder (in name order).

    Records are ``{"messages": [...], **other columns}``; the row id is the object's own "id" when it is a
    string or an integer, else "<file name>:<line number>" ("<file name>:<index>" in a JSON array).
    Relative media paths resolve against the file's folder (`base_dir`).

    Example:
        >>> rows = list(read_jsonl("fixtures/data/jsonl/conversations.jsonl"))  # doctest: +SKIP
        >>> rows[0].record["messages"][0]["role"]  # doctest: +SKIP
        'system'
    """
    field = options.field_messages or DEFAULT_FIELD
    files = list_data_files(source, DATA_FILE_SUFFIXES)
    records = iter_files_records(files)
    for path, record in take_slice(records, parse_split(options.split), lambda: count_files_records(files)):
        base_dir = os.path.dirname(os.path.abspath(path))
        yield guarded_row(lambda: record_to_row(record, path, base_dir, field), record.key, record.where, path,
                          base_dir)


def record_to_row(record: SourceRecord, path: str, base_dir: str, field: str) -> RawRow:
    """Turns one parsed object into a row, with "messages" taken from `field`."""
    if record.value is None:
        return RawRow(record.key, path, None, base_dir, record.error)
    row_id = own_id(record.value) or record.key
    if field not in record.value:
        return RawRow(row_id, path, None, base_dir, f"{record.where}: no {field!r} field")
    value = dict(record.value)
    value[DEFAULT_FIELD] = value.pop(field)
    return RawRow(row_id, path, value, base_dir)


def own_id(value: dict[str, Any]) -> str | None:
    """The object's own "id", when it is a string or an integer (a bool is neither, though Python says so)."""
    row_id = value.get("id")
    if isinstance(row_id, bool) or not isinstance(row_id, (str, int)):
        return None
    return str(row_id)

