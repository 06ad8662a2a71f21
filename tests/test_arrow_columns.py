"""Arrow columns built from numpy arrays with one copy: the same Arrow data as `datasets` builds, byte for byte."""

from __future__ import annotations

import io

import datasets
import numpy as np
import pyarrow as pa
import pytest
from datasets.arrow_writer import TypedSequence

from vlmdata.shards import rows_to_table

FEATURES = datasets.Features({
    "input_ids": datasets.List(datasets.Value("int32")),
    "audio": datasets.List(datasets.Value("float32")),
    "zeros": datasets.List(datasets.Value("int64")),
    "patches": datasets.Array2D(shape=(None, 588), dtype="uint8"),
    "images": datasets.Array4D(shape=(None, 3, 5, 7), dtype="uint8"),
    "grid": datasets.Array2D(shape=(None, 3), dtype="int32"),
    "length": datasets.Value("int32"),
    "id": datasets.Value("string"),
})


def datasets_table(rows: list[dict]) -> pa.Table:
    """The table as `datasets` builds it, value by value."""
    arrays = [pa.array(TypedSequence([row[name] for row in rows], type=feature)) for name, feature in FEATURES.items()]
    return pa.Table.from_arrays(arrays, schema=FEATURES.arrow_schema)


def ipc_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def random_rows(seed: int, count: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{
        "input_ids": rng.integers(0, 1000, rng.integers(0, 50)).astype(np.int32),
        "audio": rng.normal(size=rng.integers(0, 4)).astype(np.float32),
        "zeros": np.zeros(0, np.int64),
        "patches": rng.integers(0, 256, (rng.integers(0, 9), 588)).astype(np.uint8),  # some rows have none
        "images": rng.integers(0, 256, (rng.integers(0, 3), 3, 5, 7)).astype(np.uint8),
        "grid": np.ones((rng.integers(0, 3), 3), np.int32),
        "length": np.int32(index),
        "id": f"row-{index}",
    } for index in range(count)]


@pytest.mark.parametrize("seed, count", [(0, 1), (1, 7), (2, 16)])
def test_tables_are_the_bytes_datasets_writes(seed, count):
    rows = random_rows(seed, count)
    ours, theirs = rows_to_table(rows, FEATURES), datasets_table(rows)
    assert ours.equals(theirs)
    assert ipc_bytes(ours) == ipc_bytes(theirs)
    assert ours.column("patches").chunk(0).storage.values.values.to_numpy().tobytes() == b"".join(
        row["patches"].tobytes() for row in rows)


def test_values_off_the_fast_path_go_through_datasets():
    # int64 ids for an int32 column, a float64 image among uint8 ones: datasets casts them, and so the table does.
    rows = random_rows(3, 3)
    for row in rows:
        row["input_ids"] = row["input_ids"].astype(np.int64)
    rows[1]["images"] = np.full((1, 3, 5, 7), 7.0)
    assert ipc_bytes(rows_to_table(rows, FEATURES)) == ipc_bytes(datasets_table(rows))
    rows[2]["patches"] = np.zeros((2, 587), np.uint8)  # the wrong width: whatever datasets makes of it
    assert ipc_bytes(rows_to_table(rows, FEATURES)) == ipc_bytes(datasets_table(rows))
