"""Stage 1, convert: source rows -> the normalised dataset (docs/architecture.md, "The normalised dataset").

Rows stream from a reader (`vlmdata.readers`), are normalised (`vlmdata.schema`) and have their media loaded
(`vlmdata.media`) by `ConvertWorker`, batch by batch, wherever the executor runs it; `vlmdata.stage.run_stage`
writes them in input order. Every row read is either written or recorded in `rejects.jsonl` with its reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import datasets

from vlmdata.errors import RowError
from vlmdata.executors import Executor, make_executor
from vlmdata.media import MediaLoader, MediaOptions
from vlmdata.modalities import MediaError, load_media, media_counts
from vlmdata.parallel import batched
from vlmdata.readers import ReaderOptions, open_sources
from vlmdata.rows import RawRow, Reject, storable_text
from vlmdata.schema import NORMALISED_FEATURES, normalise
from vlmdata.stage import (
    ROWS_PER_BATCH, ROWS_PER_UNIT, BatchWorker, RowProgress, Stage, StageSummary, WrittenRow, guarded, run_stage,
)
from vlmdata.versions import library_versions

@dataclass
class ConvertSummary(StageSummary):
    """What a convert run did; `rows_read == rows_written + rows_rejected` always holds."""


def convert(
    sources: list[str],
    out_dir: str | Path,
    *,
    format: str = "auto",
    reader_options: ReaderOptions | None = None,
    media_options: MediaOptions | None = None,
    num_proc: int = 1,
    engine: str = "local",
    ray_address: str | None = None,
    num_workers: int | None = None,
    rows_per_unit: int = ROWS_PER_UNIT,
    strict: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> ConvertSummary:
    """Converts sources into a normalised dataset folder that `datasets.load_from_disk` loads.

    Args:
        sources: files, folders or dataset ids, all of one format.
        out_dir: the output folder; it appears only once complete.
        format: a reader name, or "auto" to detect it from the first source.
        reader_options: split, messages field, media root.
        media_options: resizing, audio rate, download limits.
        num_proc: worker processes for normalisation and media loading; the output is the same for any value.
        engine: "local" (this machine, `num_proc` processes) or "ray" (the actors of a Ray cluster); the output
            is the same bytes with either.
        ray_address: with "ray", the cluster to join ("auto", "HOST:PORT"); None starts a Ray for the run.
        num_workers: with "ray", the actors [default: one per CPU of the cluster].
        rows_per_unit: rows of a work unit, the rows of one shard file (a multiple of 16).
        strict: stop at the first bad row (raising FatalError) instead of recording it and going on.
        overwrite: replace `out_dir` if it exists.
        progress: show a progress bar.

    Returns:
        The run's counts; the same figures are saved in the folder's `vlmdata.json`.

    Example:
        >>> summary = convert(["fixtures/data/jsonl/conversations.jsonl"], "out/jsonl")  # doctest: +SKIP
        >>> datasets.load_from_disk("out/jsonl")[0]["messages"][0]["role"]  # doctest: +SKIP
        'system'
    """
    executor = make_executor(engine, num_proc, ray_address, num_workers)
    stage = ConvertStage(sources, format, reader_options or ReaderOptions(), media_options or MediaOptions())
    return run_stage(stage, out_dir, executor, strict=strict, overwrite=overwrite, progress=progress,
                     rows_per_unit=rows_per_unit)


class ConvertStage(Stage[ConvertSummary]):
    """Source rows -> normalised rows with their media loaded."""

    name = "convert"

    def __init__(self, sources: list[str], format: str, reader_options: ReaderOptions, media_options: MediaOptions):
        self.sources, self.format = sources, format
        self.reader_options, self.media_options = reader_options, media_options
        self.rows = open_sources(sources, format, reader_options)  # checks every source before anything is written

    def features(self) -> datasets.Features:
        return NORMALISED_FEATURES

    def batches(self) -> Iterator[list[RawRow]]:
        return batched(self.rows, ROWS_PER_BATCH)

    def worker(self, scratch_dir: Path) -> "ConvertWorker":
        options = self.media_options
        if options.cache_dir is None:
            options = replace(options, cache_dir=str(scratch_dir / "downloads"))
        if options.media_root is not None:  # workers elsewhere have another working folder
            options = replace(options, media_root=os.path.abspath(options.media_root))
        return ConvertWorker(options)

    def summary(self, out_dir: str) -> ConvertSummary:
        return ConvertSummary(out_dir)

    def settings(self) -> dict[str, Any]:
        return {
            "sources": [str(s) for s in self.sources],
            "format": self.format,
            "reader": asdict(self.reader_options),
            "media": {k: v for k, v in asdict(self.media_options).items() if k != "cache_dir"},
        }

    def metadata(self, summary: ConvertSummary, executor: Executor) -> dict[str, Any]:
        versions = library_versions("datasets", "PIL", "pyarrow", "numpy", "soundfile", "soxr")
        return {"versions": versions, "arguments": {**self.settings(), **executor.describe()}}


@dataclass(frozen=True)
class ConvertWorker(BatchWorker[RawRow, MediaLoader]):
    """Normalises rows and loads their media; one MediaLoader per process, whose download cache serves every batch."""

    media_options: MediaOptions
    features = NORMALISED_FEATURES

    def setup(self) -> MediaLoader:
        return MediaLoader(self.media_options)

    def process(self, batch: list[RawRow], loader: MediaLoader) -> list[WrittenRow | Reject]:
        return [convert_row(row, loader) for row in batch]


def convert_row(row: RawRow, loader: MediaLoader) -> WrittenRow | Reject:
    """One row -> its normalised record, or the Reject that says why it cannot be written."""
    # A source or id that is not UTF-8 (a file name on disk) is kept escaped, rather than costing every row.
    row = replace(row, id=storable_text(row.id), source=storable_text(row.source))
    if row.error is not None:
        return Reject(row.source, row.id, "read", row.error)
    return guarded(row.source, row.id, "normalise", lambda progress: _converted(row, loader, progress))


def _converted(row: RawRow, loader: MediaLoader, progress: RowProgress) -> WrittenRow:
    conversation = normalise(row.record or {})
    _check_unicode(conversation.messages)
    try:
        media = load_media(conversation, row.base_dir, loader)
    except MediaError as error:
        progress.step = error.kind
        raise
    columns = {"messages": conversation.messages, **media, "id": row.id, "source": row.source}
    return WrittenRow(columns, media_counts(columns))


def _check_unicode(messages: list[dict[str, Any]]) -> None:
    """Refuses text with no UTF-8 form (JSON can spell a lone surrogate, "\\ud800"), naming where it is: Arrow,
    which stores UTF-8, would refuse the row only when writing it, with a vaguer reason."""
    texts = []
    for number, message in enumerate(messages):
        texts.append((f"message {number}: role", message["role"]))
        texts += [(f"message {number}, part {index}", part["text"]) for index, part in enumerate(message["content"])]
    for where, text in texts:
        try:
            if text is not None:
                text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise RowError(f"{where}: the text is not valid Unicode ({error.reason})") from error
