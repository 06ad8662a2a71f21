"""ShareGPT / LLaVA-style conversations: turns of ``{from, value}`` with ``<image>`` tags in the text.

A LLaVA-Instruct row looks like::

    {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat are the colors of the bus?"},
                       {"from": "gpt", "value": "The bus is white and red."}]}

Each turn becomes a message: "human" -> "user", "gpt" -> "assistant" (other speakers keep their name, for the
schema to accept or reject), and each ``<image>`` / ``<audio>`` tag becomes a bare ``{"type": "image"}`` /
``{"type": "audio"}`` part in place, which the schema later fills from the "image"/"images" column. The
"image" column itself is passed on untouched: its relative paths resolve against the file's folder or
`--media-root` when media are loaded.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterator

from vlmdata.readers.files import list_data_files
from vlmdata.readers.guard import guarded_row
from vlmdata.readers.jsonl import own_id
from vlmdata.readers.options import ReaderOptions
from vlmdata.readers.records import DATA_FILE_SUFFIXES, SourceRecord, count_files_records, iter_files_records
from vlmdata.readers.split import parse_split, take_slice
from vlmdata.rows import RawRow

DEFAULT_FIELD = "conversations"
SPEAKER_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}

# One newline on each side of a tag is layout ("<image>\nWhat is this?"), not part of the question.
_MEDIA_TAG = re.compile(r"(?:\r?\n)?<(image|audio)>(?:\r?\n)?")


class TurnError(ValueError):
    """A conversation that is not a list of turns."""


def read_sharegpt(source: str, options: ReaderOptions = ReaderOptions()) -> Iterator[RawRow]:
    """Yields one row per conversation of a ShareGPT JSON, JSON Lines or parquet file (or folder of them).

    Records are ``{"messages": [{"role", "content": [parts]}], **other columns}`` ("conversations" removed).
    The conversation is read from `options.field_messages` when the object has that column, else from
    "conversations". Ids: the object's own "id" when a string or an integer, else "<file name>:<position>".

    Example:
        >>> row = next(read_sharegpt("fixtures/data/sharegpt/sharegpt.json"))  # doctest: +SKIP
        >>> row.record["messages"][0]["content"]  # doctest: +SKIP
        [{'type': 'image'}, {'type': 'text', 'text': 'What are the colors of the bus in the image?'}]
    """
    files = list_data_files(source, DATA_FILE_SUFFIXES)
    records = iter_files_records(files)
    for path, record in take_slice(records, parse_split(options.split), lambda: count_files_records(files)):
        base_dir = os.path.dirname(os.path.abspath(path))
        yield guarded_row(lambda: record_to_row(record, path, base_dir, options.field_messages), record.key,
                          record.where, path, base_dir)


def record_to_row(record: SourceRecord, path: str, base_dir: str, field: str | None = None) -> RawRow:
    """Turns one ShareGPT object into a row with OpenAI-style "messages"."""
    if record.value is None:
        return RawRow(record.key, path, None, base_dir, record.error)
    row_id = own_id(record.value) or record.key
    field = field if field and field in record.value else DEFAULT_FIELD
    if field not in record.value:
        return RawRow(row_id, path, None, base_dir, f"{record.where}: no {DEFAULT_FIELD!r} field")
    value = dict(record.value)
    try:
        value["messages"] = turns_to_messages(value.pop(field))
    except TurnError as exc:
        return RawRow(row_id, path, None, base_dir, f"{record.where}: {exc}")
    return RawRow(row_id, path, value, base_dir)


def turns_to_messages(turns: Any) -> list[dict[str, Any]]:
    """Converts ShareGPT turns to messages.

    Example:
        >>> turns_to_messages([{"from": "gpt", "value": "A cat."}])
        [{'role': 'assistant', 'content': [{'type': 'text', 'text': 'A cat.'}]}]

    Raises:
        TurnError: `turns` is not a list of objects that each name a speaker.
    """
    if not isinstance(turns, list):
        raise TurnError(f"conversations must be a list of turns, found {type(turns).__name__}")
    messages = []
    for number, turn in enumerate(turns):
        # Some exports already use OpenAI's keys inside "conversations"; accept both spellings.
        speaker = turn.get("from", turn.get("role")) if isinstance(turn, dict) else None
        if not isinstance(speaker, str):
            raise TurnError(f"turn {number} has no 'from' speaker")
        text = turn.get("value", turn.get("content"))
        messages.append({"role": SPEAKER_ROLES.get(speaker, speaker), "content": split_media_tags(text)})
    return messages


def split_media_tags(text: Any) -> Any:
    """Splits a turn's text at its ``<image>``/``<audio>`` tags into content parts; other values pass as they are.

    Example:
        >>> split_media_tags("<image>\\nWhat is it?")
        [{'type': 'image'}, {'type': 'text', 'text': 'What is it?'}]
        >>> split_media_tags("Compare <image> and <image>")[:2]
        [{'type': 'text', 'text': 'Compare '}, {'type': 'image'}]
    """
    if not isinstance(text, str):
        return text
    parts: list[dict[str, Any]] = []
    for number, piece in enumerate(_MEDIA_TAG.split(text)):
        if number % 2:
            parts.append({"type": piece})
        elif piece:
            parts.append({"type": "text", "text": piece})
    return parts or [{"type": "text", "text": ""}]
