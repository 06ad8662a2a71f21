"""Shard files written around the page cache: the same bytes as a buffered write, whatever their length, and an
ordinary file where the file system refuses O_DIRECT."""

from __future__ import annotations

import errno
import os

import datasets
import numpy as np
import pyarrow as pa
import pytest
from datasets.arrow_writer import ArrowWriter

from vlmdata import direct_file
from vlmdata.direct_file import ALIGNMENT, STAGING_BYTES, DirectFile, open_for_writing
from vlmdata.shard_files import ShardFiles

pytestmark = pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="the platform has no O_DIRECT")

SIZES = {
    "empty": [0],
    "one byte": [1],
    "under a block": [ALIGNMENT - 1],
    "one block": [ALIGNMENT],
    "over a block": [ALIGNMENT + 1],
    "one staging buffer": [STAGING_BYTES],
    "over a staging buffer": [STAGING_BYTES + 1],
    "small, large, small": [3, 2 * STAGING_BYTES + 5, 7],
}


def random_bytes(size: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


@pytest.mark.parametrize("sizes", SIZES.values(), ids=SIZES.keys())
def test_a_direct_file_holds_exactly_the_bytes_written(tmp_path, sizes):
    path = tmp_path / "file.bin"
    parts = [random_bytes(size, seed) for seed, size in enumerate(sizes)]
    file = open_for_writing(str(path))
    if not isinstance(file, DirectFile):
        pytest.skip(f"the file system of {tmp_path} refuses O_DIRECT")
    for part in parts:
        assert file.write(part) == len(part)
    assert file.tell() == sum(sizes)
    file.close()
    assert path.read_bytes() == b"".join(parts)


def test_two_files_open_at_once_keep_their_own_bytes(tmp_path):
    first, second = open_for_writing(str(tmp_path / "a")), open_for_writing(str(tmp_path / "b"))
    a, b = random_bytes(ALIGNMENT + 10, 1), random_bytes(2 * ALIGNMENT + 3, 2)
    for offset in range(0, len(b), 1000):  # interleaved, so a shared staging buffer would mix them
        first.write(a[offset : offset + 1000])
        second.write(b[offset : offset + 1000])
    first.close()
    second.close()
    assert (tmp_path / "a").read_bytes() == a
    assert (tmp_path / "b").read_bytes() == b


def test_where_o_direct_is_refused_an_ordinary_file_is_written(tmp_path, monkeypatch):
    real_open = os.open

    def refusing_direct(path, flags, *args):
        if flags & os.O_DIRECT:  # as tmpfs before Linux 6.6 and some FUSE file systems answer
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(direct_file.os, "open", refusing_direct)
    data = random_bytes(ALIGNMENT + 1, 3)
    with open_for_writing(str(tmp_path / "file.bin")) as file:
        assert not isinstance(file, DirectFile)
        file.write(data)
    assert (tmp_path / "file.bin").read_bytes() == data


def test_shard_files_are_the_bytes_datasets_writes_and_load_back(tmp_path):
    features = datasets.Features({"id": datasets.Value("string"), "pixels": datasets.Sequence(datasets.Value("uint8"))})
    rows = [{"id": str(index), "pixels": list(random_bytes(1000 + 4093 * index, index))} for index in range(8)]
    table = pa.Table.from_pylist(rows, schema=features.arrow_schema)

    files = ShardFiles(str(tmp_path / "ours"), "shard", features)
    (tmp_path / "ours").mkdir()
    for start in range(0, len(rows), 3):
        files.write_table(table.slice(start, 3))
    [ours] = files.close()

    theirs = ArrowWriter(features=features, path=str(tmp_path / "theirs.arrow"))
    for start in range(0, len(rows), 3):
        theirs.write_table(table.slice(start, 3))
    theirs.finalize()
    theirs.close()

    assert open(ours, "rb").read() == (tmp_path / "theirs.arrow").read_bytes()
    assert datasets.Dataset.from_file(ours).to_list() == rows
