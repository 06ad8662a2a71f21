"""Source readers: each turns one kind of source into a stream of `RawRow`s, unnormalised.

A reader never decodes media (MMIU's images are only read out of their archives) and never rewrites content;
a row it cannot parse comes out with an error instead of a record, and a problem with a whole source raises
`FatalError`.

Example:
    >>> from vlmdata.readers import ReaderOptions, read_sources
    >>> rows = read_sources(["fixtures/data/jsonl/conversations.jsonl"])  # doctest: +SKIP
    >>> next(rows).record["messages"][0]["role"]  # doctest: +SKIP
    'system'
"""

from __future__ import annotations

import itertools
import os
from typing import Callable, Iterator

from vlmdata.errors import FatalError
from vlmdata.readers.files import list_data_files
from vlmdata.readers.hub import is_hub_source
from vlmdata.readers.jsonl import read_jsonl
from vlmdata.readers.llava_instruct_mix import read_llava_instruct_mix
from vlmdata.readers.mmiu import IMAGE_PATHS_COLUMN, find_metadata_files, read_mmiu
from vlmdata.readers.options import ReaderOptions
from vlmdata.readers.records import JSON_LINES_SUFFIXES, JSON_SUFFIXES, PARQUET_SUFFIXES, first_record, parquet_columns
from vlmdata.readers.sharegpt import read_sharegpt
from vlmdata.rows import RawRow

__all__ = ["FORMATS", "ReaderOptions", "detect_format", "open_sources", "read_sources"]

Reader = Callable[[str, ReaderOptions], Iterator[RawRow]]

FORMATS: dict[str, Reader] = {
    "llava-instruct-mix": read_llava_instruct_mix,
    "mmiu": read_mmiu,
    "jsonl": read_jsonl,
    "sharegpt": read_sharegpt,
}


def read_sources(
    sources: list[str], format: str = "auto", options: ReaderOptions = ReaderOptions()
) -> Iterator[RawRow]:
    """Yields the rows of every source in turn, each read by its format's reader.

    Every source's format is settled before the first row is read, so that a source that cannot be read
    fails the run at once rather than after hours of work on the ones before it.

    Args:
        sources: local files or folders, hub dataset ids, ``hf://`` paths.
        format: a name from `FORMATS`, or "auto" to detect each source's format.
        options: the split, the messages column and the media root.

    Raises:
        FatalError: an unknown format, or a source that cannot be read.
    """
    yield from open_sources(sources, format, options)


def open_sources(
    sources: list[str], format: str = "auto", options: ReaderOptions = ReaderOptions()
) -> Iterator[RawRow]:
    """Like `read_sources`, but checks every source when called rather than when the first row is asked for,
    so that a stage can fail on a bad source before it writes anything.

    Every reader is called here too, so that one that checks its source when called (MMIU opens its archives)
    fails the run before the first row of any source is read.

    Raises:
        FatalError: an unknown format, or a source that does not exist or cannot be read.
    """
    if format != "auto" and format not in FORMATS:
        raise FatalError(f"Unknown format {format!r}; the formats are auto, {', '.join(FORMATS)}.")
    readers = []
    for source in sources:
        if format != "auto" and not is_hub_source(source) and not os.path.exists(source):
            raise FatalError(f"Cannot read {source}: no such file or folder.")
        readers.append((source, FORMATS[detect_format(source) if format == "auto" else format]))
    return itertools.chain.from_iterable([reader(source, options) for source, reader in readers])


def detect_format(source: str) -> str:
    """The format of a source, from its layout and its first record.

    - a hub dataset id or ``hf://`` path: "llava-instruct-mix" (read with `datasets`);
    - a folder with *.zip archives and MMIU metadata, or a data file with "input_image_path": "mmiu";
    - parquet with a "messages" column (a file or a folder of shards): "llava-instruct-mix";
    - JSON / JSON Lines (or parquet) whose first object has "conversations": "sharegpt";
    - any other JSON / JSON Lines: "jsonl".

    Example:
        >>> detect_format("HuggingFaceH4/llava-instruct-mix-vsft")
        'llava-instruct-mix'

    Raises:
        FatalError: the source does not exist, or looks like none of the formats.
    """
    if is_hub_source(source):
        return "llava-instruct-mix"
    if os.path.isdir(source):
        detected = _detect_folder(source)
    elif os.path.isfile(source):
        detected = _detect_file(source)
    else:
        raise FatalError(f"Cannot read {source}: no such file or folder.")
    if detected is None:
        raise FatalError(
            f"Cannot tell the format of {source}; give --format with one of {', '.join(FORMATS)}."
        )
    return detected


def _detect_file(path: str) -> str | None:
    if path.endswith(PARQUET_SUFFIXES):
        return _format_of_columns(parquet_columns(path), default=None)
    if path.endswith(JSON_LINES_SUFFIXES + JSON_SUFFIXES):
        return _format_of_columns(list(first_record(path) or {}), default="jsonl")
    return None


def _format_of_columns(columns: list[str], default: str | None) -> str | None:
    if IMAGE_PATHS_COLUMN in columns:
        return "mmiu"
    if "conversations" in columns:
        return "sharegpt"
    if "messages" in columns:
        return "jsonl" if default == "jsonl" else "llava-instruct-mix"
    return default


def _detect_folder(folder: str) -> str | None:
    if find_metadata_files(folder):
        return "mmiu"
    for suffixes, recursive in ((PARQUET_SUFFIXES, True), (JSON_LINES_SUFFIXES + JSON_SUFFIXES, False)):
        try:
            first_file = list_data_files(folder, suffixes, recursive=recursive)[0]
        except FatalError:
            continue
        return _detect_file(first_file)
    return None
