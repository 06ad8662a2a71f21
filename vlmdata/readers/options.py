"""Settings shared by every reader."""

from __future__ import annotations

from dataclasses import dataclass

from vlmdata.media.options import DEFAULT_MAX_FILE_BYTES


@dataclass(frozen=True)
class ReaderOptions:
    """How sources are read.

    Attributes:
        split: which rows to read, in `datasets` split syntax: a split name, optionally sliced
            (``"train"``, ``"train[:1%]"``, ``"train[10:20]"``, ``"test[50%:]"``). A split name selects
            shards in a folder of hub-layout parquet files or a split of a hub dataset; a single local file is
            its own split, so only the slice applies to it. None reads the "train" split where a source has
            named splits, and everything otherwise.
        field_messages: the column holding the conversation; it is renamed to "messages" in the record.
        media_root: the folder MMIU archives (or their extracted folders) live in, when not beside the
            metadata file. Other readers leave it to the media loader.
        max_file_bytes: an archive member larger than this (uncompressed) is refused without being read, so
            that a small archive cannot expand into all the memory there is (a "zip bomb").
    """

    split: str | None = None
    field_messages: str | None = "messages"
    media_root: str | None = None
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
