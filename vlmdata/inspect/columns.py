"""Reading chosen columns of a dataset folder's Arrow files, batch by batch, from memory maps.

The files are mapped, not read: a batch's buffers are views into the map, so only the pages of the columns
actually touched (and, for images, only their first bytes) are ever read from disk. Statistics over millions
of rows therefore cost memory for the figures kept, not for the data.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from vlmdata.errors import FatalError


def batches(files: Iterable[Path], columns: list[str]) -> Iterator[pa.RecordBatch]:
    """Every record batch of `files` in row order, holding only `columns` (those the files have)."""
    for file in files:
        with pa.memory_map(str(file)) as source:
            reader = pa.ipc.open_stream(source)
            present = [name for name in columns if name in reader.schema.names]
            for batch in reader:
                yield batch.select(present)


def count_rows(files: Iterable[Path]) -> int:
    """The number of rows, from the batch headers alone."""
    return sum(batch.num_rows for batch in batches(files, []))


def list_lengths(column: pa.Array) -> list[int]:
    """The length of each list in a list column, 0 for a null list."""
    return pc.fill_null(pc.list_value_length(column), 0).to_pylist()


def rows_at(files: Iterable[Path], indices: Iterable[int], columns: list[str]) -> dict[int, dict[str, Any]]:
    """The rows at `indices` (positions in the whole folder) as Python values, reading only those rows."""
    wanted = sorted(set(indices))
    found: dict[int, dict[str, Any]] = {}
    start = 0
    for batch in batches(files, columns):
        end = start + batch.num_rows
        local = [index - start for index in wanted if start <= index < end]
        if local:
            for index, row in zip(local, batch.take(pa.array(local)).to_pylist()):
                found[start + index] = row
        start = end
    return found


def find_keys(files: Iterable[Path], keys: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """The first position of each (source, id) key of `keys` that the files hold."""
    positions: dict[tuple[str, str], int] = {}
    start = 0
    for batch in batches(files, ["source", "id"]):
        sources, ids = batch.column("source").to_pylist(), batch.column("id").to_pylist()
        for offset, key in enumerate(zip(sources, ids)):
            if key in keys and key not in positions:
                positions[key] = start + offset
        start += batch.num_rows
    return positions


def find_ids(files: Iterable[Path], ids: list[str]) -> list[int]:
    """The positions of the rows whose `id` is one of `ids`, in the order of `ids`.

    Raises:
        FatalError: some id is not in the files.
    """
    wanted, positions = set(ids), {}
    start = 0
    for batch in batches(files, ["id"]):
        for offset, row_id in enumerate(batch.column("id").to_pylist()):
            if row_id in wanted and row_id not in positions:
                positions[row_id] = start + offset
        start += batch.num_rows
    missing = [row_id for row_id in ids if row_id not in positions]
    if missing:
        raise FatalError(f"No row has the id {', '.join(repr(row_id) for row_id in missing)}.")
    return [positions[row_id] for row_id in ids]
