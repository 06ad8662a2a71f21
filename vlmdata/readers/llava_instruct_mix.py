"""The layout of HuggingFaceH4/llava-instruct-mix-vsft: parquet rows of "messages" and "images".

One row (the hub's parquet schema, which `datasets` reads as ``List(Image())`` for "images")::

    messages: list<struct<content: list<struct<index: int64, text: string, type: string>>, role: string>>
    images:   list<struct<bytes: binary, path: string>>

    {"messages": [{"role": "user", "content": [{"index": 0, "text": None, "type": "image"},
                                               {"index": None, "text": "What is in the picture?", "type": "text"}]},
                  {"role": "assistant", "content": [{"index": None, "text": "A red bus.", "type": "text"}]}],
     "images": [{"bytes": b"\\xff\\xd8...", "path": None}]}

Sources: a parquet file, a folder of parquet files (the hub layout ``data/train-00000-of-00020.parquet``, whose
file names carry the split), or a hub dataset id / ``hf://datasets/...`` path, streamed with `datasets`.
Rows are passed on as they are (image parts keep their null "text" and their "index"); the schema stage
normalises them. Images stay encoded bytes: nothing is decoded here.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Iterator

from vlmdata.errors import FatalError
from vlmdata.readers.files import list_data_files
from vlmdata.readers.guard import guarded_row
from vlmdata.readers.hub import HubSource, hub_error, is_hub_source
from vlmdata.readers.options import ReaderOptions
from vlmdata.readers.records import PARQUET_SUFFIXES, iter_parquet_rows, open_parquet
from vlmdata.readers.split import Split, parse_split
from vlmdata.rows import RawRow

DEFAULT_SPLIT = "train"
KNOWN_SPLITS = ("train", "test", "validation", "valid", "val", "dev", "eval")
IMAGE_COLUMNS = ("images", "image")

# Shards written by `datasets` / the hub: "train-00000-of-00020.parquet", sometimes with a hash after it.
_SHARD_NAME = re.compile(r"(?P<split>[A-Za-z][\w.]*?)-\d{5}-of-\d{5}(?:-.*)?")


def read_llava_instruct_mix(source: str, options: ReaderOptions = ReaderOptions()) -> Iterator[RawRow]:
    """Yields the rows of a llava-instruct-mix-style parquet source.

    Records are ``{"messages": [...], "images": [{"bytes", "path"}, ...], **other columns}``. Ids are
    "<file name>:<row index in that file>" for local files and "<split>:<row index in the split>" for hub
    datasets; both are stable across runs.

    Example:
        >>> options = ReaderOptions(split="train[:25%]")
        >>> rows = list(read_llava_instruct_mix("fixtures/data/llava_instruct_mix", options))  # doctest: +SKIP
        >>> rows[0].id  # doctest: +SKIP
        'train-00000-of-00001.parquet:0'
    """
    split = parse_split(options.split)
    field = options.field_messages or "messages"
    if is_hub_source(source):
        yield from read_hub_dataset(source, split, field)
    else:
        yield from read_local_parquet(source, split, field)


def read_local_parquet(source: str, split: Split | None, field: str = "messages") -> Iterator[RawRow]:
    """Streams the rows of a parquet file or folder, reading only the row groups the split's slice covers."""
    files = list_data_files(source, PARQUET_SUFFIXES, recursive=True)
    if os.path.isdir(source):
        files = files_of_split(files, source, split.name if split else None)
    counts = [_checked_row_count(path, field) for path in files]
    start, stop = split.bounds(sum(counts)) if split else (0, sum(counts))
    offset = 0
    for path, count in zip(files, counts, strict=True):
        first, last = max(start - offset, 0), min(stop - offset, count)
        offset += count
        if first >= last:
            continue
        name, base_dir = os.path.basename(path), os.path.dirname(os.path.abspath(path))
        for index, row, error in iter_parquet_rows(path, first, last):
            key, where = f"{name}:{index}", f"row {index}"
            if error:
                yield RawRow(key, path, None, base_dir, f"{where}: {error}")
            else:
                yield guarded_row(lambda: RawRow(key, path, _with_messages(row, field), base_dir), key, where, path,
                                  base_dir)


def split_of_file(path: str, root: str) -> str | None:
    """The split a parquet file belongs to, from its name or folder; None when neither names one.

    Example:
        >>> split_of_file("ds/data/test-00000-of-00003.parquet", "ds")
        'test'
        >>> split_of_file("ds/default/validation/0000.parquet", "ds")
        'validation'
    """
    stem = os.path.basename(path).removesuffix(".parquet")
    shard = _SHARD_NAME.fullmatch(stem)
    if shard:
        return shard["split"]
    folders = os.path.relpath(os.path.dirname(path), root).split(os.sep)
    for name in [stem, *reversed(folders)]:
        if name in KNOWN_SPLITS:
            return name
    return None


def files_of_split(files: list[str], root: str, name: str | None) -> list[str]:
    """The files of a folder that hold the split `name` ("train" when None and the folder has named splits).

    A folder whose file names carry no split is one split: every file is read, whatever the name.

    Raises:
        FatalError: the folder has named splits, but not this one.
    """
    splits = {path: split_of_file(path, root) for path in files}
    available = sorted({split for split in splits.values() if split})
    if not available:
        return files
    if name is None:
        if DEFAULT_SPLIT not in available:
            return files
        name = DEFAULT_SPLIT
    chosen = [path for path in files if splits[path] == name]
    if not chosen:
        raise FatalError(f"{root} has no split {name!r}; its splits are {', '.join(available)}.")
    return chosen


def read_hub_dataset(source: str, split: Split | None, field: str = "messages") -> Iterator[RawRow]:
    """Streams a hub dataset with `datasets`, images kept as encoded ``{bytes, path}``.

    Streaming has no slice syntax, so a slice becomes ``skip``/``take``; percentages use the split size the
    dataset card declares.
    """
    split = split or Split(DEFAULT_SPLIT)
    dataset = _load_streaming(source, split.name)
    total = _split_size(dataset, split.name) if split.needs_total else None
    if split.needs_total and total is None:
        raise FatalError(
            f"Cannot take {split.name!r} by percentage from {source}: the hub does not say how many rows it has; "
            "give row numbers instead, like train[:1000]."
        )
    start, stop = split.bounds(total)
    if stop is not None and stop <= start:
        return
    dataset = dataset.skip(start) if start else dataset
    dataset = dataset.take(stop - start) if stop is not None else dataset
    origin = f"{source}[{split.name}]"
    examples = iter(dataset)
    index = start
    while True:
        try:
            example = next(examples)
        except StopIteration:
            return
        except Exception as exc:  # a dropped connection mid-stream ends the whole source
            raise hub_error(source, exc) from exc
        key, where = f"{split.name}:{index}", f"row {index}"
        yield guarded_row(lambda: RawRow(key, origin, _with_messages(example, field)), key, where, origin, None)
        index += 1


def _load_streaming(source: str, split_name: str):
    import datasets

    target = HubSource.parse(source)
    try:
        if target.data_files:
            dataset = datasets.load_dataset(
                "parquet", data_files={split_name: target.data_files}, split=split_name, streaming=True
            )
        else:
            dataset = datasets.load_dataset(
                target.repo_id, revision=target.revision, split=split_name, streaming=True
            )
    except Exception as exc:  # offline, unknown name, gated: datasets raises many types, all fatal here
        raise hub_error(source, exc) from exc
    return _keep_image_bytes(dataset)


def _keep_image_bytes(dataset):
    """Casts image columns to ``Image(decode=False)``: rows then carry the original encoded bytes."""
    features = dataset.features
    if features is None:
        # Columns unknown until the first row: turn decoding off for every column instead.
        return dataset.decode(False) if hasattr(dataset, "decode") else dataset
    for column in IMAGE_COLUMNS:
        if column in features:
            dataset = dataset.cast_column(column, _undecoded(features[column]))
    return dataset


def _undecoded(feature):
    import datasets

    if isinstance(feature, datasets.Image):
        return datasets.Image(decode=False)
    # List and LargeList (Sequence before datasets 4) wrap one feature; which exist depends on the version.
    sequence_types = tuple(filter(None, (getattr(datasets, name, None) for name in ("List", "LargeList", "Sequence"))))
    if isinstance(feature, sequence_types):
        return dataclasses.replace(feature, feature=_undecoded(feature.feature))
    if isinstance(feature, list):
        return [_undecoded(feature[0])]
    if isinstance(feature, dict):
        return {key: _undecoded(value) for key, value in feature.items()}
    return feature


def _split_size(dataset, split_name: str) -> int | None:
    splits = getattr(dataset.info, "splits", None) or {}
    info = splits.get(split_name)
    return info.num_examples if info and info.num_examples else None


def _checked_row_count(path: str, field: str) -> int:
    """The number of rows of a file, from its footer, once sure it has the messages column."""
    parquet = open_parquet(path)
    columns = parquet.schema_arrow.names
    if field not in columns:
        raise FatalError(f"{path} has no {field!r} column (its columns are {', '.join(columns)}).")
    return parquet.metadata.num_rows


def _with_messages(row: dict[str, Any], field: str) -> dict[str, Any]:
    if field != "messages":
        row["messages"] = row.pop(field)
    return row
