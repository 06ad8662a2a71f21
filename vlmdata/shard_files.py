"""How a stream of Arrow tables becomes shard files, wherever they are written: a local folder, or an fsspec URL.

The same rule serves this process and a remote worker, so that a work unit's files are the same bytes whoever
wrote them.
"""

from __future__ import annotations

import datasets
import fsspec
import pyarrow as pa
from datasets.arrow_writer import ArrowWriter

from vlmdata.direct_file import open_for_writing

DEFAULT_MAX_SHARD_BYTES = 500 * 1024 * 1024


def join(folder: str, name: str) -> str:
    """`folder/name`, for a local path and for a URL alike (where `Path` would fold `s3://` into `s3:/`)."""
    return f"{folder.rstrip('/')}/{name}"


class ShardFiles:
    """Arrow files `STEM-000.arrow`, `STEM-001.arrow`... in a folder (a path or a URL), a new one whenever a file
    passes `max_bytes` of table data."""

    def __init__(self, folder: str, stem: str, features: datasets.Features, max_bytes: int = DEFAULT_MAX_SHARD_BYTES):
        self.folder, self.stem, self.features, self.max_bytes = str(folder), stem, features, max_bytes
        self.paths: list[str] = []
        self._writer: ArrowWriter | None = None
        self._file = None  # what the writer writes through, opened and closed here
        self._bytes = 0

    def write_table(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        if self._writer is None:
            path = join(self.folder, f"{self.stem}-{len(self.paths):03d}.arrow")
            self.paths.append(path)
            # A URL through fsspec, as ArrowWriter would open it; a local path around the page cache.
            self._file = fsspec.open(path, "wb").open() if "://" in path else open_for_writing(path)
            self._writer = ArrowWriter(features=self.features, stream=self._file)
            self._bytes = 0
        self._writer.write_table(table)
        self._bytes += table.nbytes
        if self._bytes >= self.max_bytes:
            self._close_file()

    def close(self) -> list[str]:
        """Closes the last file; returns every file written, in order."""
        self._close_file()
        return self.paths

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.finalize()
            self._writer.close()
            self._file.close()
            self._writer = self._file = None


class ShardSequence:
    """The shard files of one output, in order: tables written here (a new file at each work unit's end) and
    files a remote worker wrote, adopted as they are. Both output folders keep theirs in one."""

    def __init__(self, folder: str, features: datasets.Features, max_bytes: int = DEFAULT_MAX_SHARD_BYTES):
        self.folder, self.features, self.max_bytes = str(folder), features, max_bytes
        self.paths: list[str] = []
        self._current: ShardFiles | None = None

    def write_table(self, table: pa.Table) -> None:
        """Appends rows already in the features' Arrow storage form to the current shard."""
        if self._current is None:
            self._current = ShardFiles(self.folder, f"shard-{len(self.paths):05d}", self.features, self.max_bytes)
        self._current.write_table(table)

    def end_shard(self) -> None:
        """Closes the current shard: the next rows start a new file (a work unit's rows are a file of their own)."""
        if self._current is not None:
            self.paths += self._current.close()
            self._current = None

    def adopt(self, paths: list[str]) -> None:
        """Takes shard files a worker wrote inside the output as the next shards, in this order."""
        self.end_shard()
        self.paths += list(paths)
