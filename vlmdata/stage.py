"""One runner for every stage: input batches in, a committed output folder out (docs/architecture.md, "Stages").

A stage (convert, tokenize, or any later one) declares its input batches, a picklable `BatchWorker` that turns
one batch into written rows and rejects, its output features, and its metadata. `run_stage` owns everything
else, once for all stages: the folder and its crash-safe commit, background writes, the rejects file and
`--strict`, the progress bar, timing, `vlmdata.json` and the summary. Every row read is either written or
rejected with its reason: `rows_read == rows_written + rows_rejected`.

Example:
    >>> summary = run_stage(ConvertStage(...), "out/normalised", LocalExecutor(2))  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Generic, TypeVar

import datasets
import pyarrow as pa
from tqdm import tqdm

from vlmdata.accounting import RejectLog
from vlmdata.arrow_folder import ArrowFolderWriter
from vlmdata.errors import FatalError, RowError, unexpected
from vlmdata.executors import ROWS_PER_UNIT, Executor
from vlmdata.folders import METADATA_FILE, REJECTS_FILE
from vlmdata.modalities import MODALITIES
from vlmdata.parallel import InBackground, batched
from vlmdata.rows import Reject
from vlmdata.url_folder import UrlFolderWriter, is_url, local_path

ROWS_PER_BATCH = 16

# The step of a row's journey a reject names: "read" (the source), "normalise", a modality's kind ("image",
# "audio": loading that media), "media" (decoding it for the processor), "tokenize", or "write" (to Arrow).
RowStep = str

Row = TypeVar("Row")
Resources = TypeVar("Resources")


@dataclass
class WrittenRow:
    """One row a worker wrote: its stored columns, and what it adds to the summary.

    Attributes:
        columns: the row's values, one per output feature.
        counts: numbers the summary adds up over rows (`{"images": 2, "tokens": 57}`).
        length: the row's length in tokens, for the summary's percentiles (stages that have one).
    """

    columns: dict[str, Any]
    counts: dict[str, int] = field(default_factory=dict)
    length: int | None = None


@dataclass
class Tally:
    """What batches add to a summary; tallies add up in any order, so workers anywhere can count."""

    rows_read: int = 0
    rows_written: int = 0
    counts: Counter = field(default_factory=Counter)
    lengths: Counter = field(default_factory=Counter)  # a histogram: memory grows with distinct lengths, not rows

    def add(self, other: "Tally") -> None:
        self.rows_read += other.rows_read
        self.rows_written += other.rows_written
        self.counts.update(other.counts)
        self.lengths.update(other.lengths)


@dataclass
class BatchResult:
    """A batch's written rows as one Arrow table in the stage's features, its rejects in input order, its tally.

    `ends_unit` is set by the executor on the last batch of a work unit, where the writer ends the shard.
    """

    table: pa.Table
    rejects: list[Reject]
    tally: Tally
    ends_unit: bool = False


@dataclass
class WorkUnit:
    """Consecutive batches of a stage's input, numbered from 0: what a remote worker turns into shard files."""

    index: int
    batches: list  # each a stage's batch: a list of rows, or what its worker reads them from
    first_row: int = 0

    @property
    def rows(self) -> int:
        return sum(len(batch) for batch in self.batches)


@dataclass
class WrittenUnit:
    """A work unit a worker wrote itself: its shard files (inside the output being written), rejects and tally."""

    index: int
    paths: list[str]
    rejects: list[Reject]
    tally: Tally


def work_units(batches: Iterable[list], batches_per_unit: int) -> Iterator[WorkUnit]:
    """The stage's batches grouped into work units, in input order."""
    first_row = 0
    for index, group in enumerate(batched(batches, batches_per_unit)):
        unit = WorkUnit(index, group, first_row)
        first_row += unit.rows
        yield unit


class RowProgress:
    """The step a row has reached, named by its reject if the row fails there."""

    def __init__(self, step: RowStep):
        self.step = step


def guarded(source: str, row_id: str, first_step: RowStep, work: Callable[[RowProgress], Row]) -> Row | Reject:
    """`work(progress)`, or the Reject of the row at the step it reached.

    A RowError's message is the reason. Anything else costs the row too, as `unexpected <error>`: inputs meet
    decoders, processors and templates in ways nobody foresaw, and one such row must not stop a run of hours.
    """
    progress = RowProgress(first_step)
    try:
        return work(progress)
    except RowError as error:
        return Reject(source, row_id, progress.step, str(error))
    except Exception as error:
        return Reject(source, row_id, progress.step, unexpected(error))


class BatchWorker(ABC, Generic[Row, Resources]):
    """Turns a batch of a stage's input rows into a BatchResult; picklable, so any executor can run it.

    Subclasses are frozen dataclasses of their options: `resources()` (a processor, a media loader) is then
    made once per process and reused for every batch.
    """

    features: datasets.Features

    @abstractmethod
    def setup(self) -> Resources:
        """What every row needs, made once per process."""

    @abstractmethod
    def process(self, batch: list[Row], resources: Resources) -> list[WrittenRow | Reject]:
        """One result per input row, in order (each row's work wrapped in `guarded`)."""

    def table(self, rows: list[dict[str, Any]]) -> pa.Table:
        """The rows' columns as an Arrow table in `features`.

        Rows are in storage form already. Encoding them through the features would store a mere reference
        instead of an image's bytes whenever a file of the image's name exists in the working folder.
        """
        return pa.Table.from_pylist(rows, schema=self.features.arrow_schema)

    def resources(self) -> Resources:
        return _resources(self)

    def __call__(self, batch: list[Row]) -> BatchResult:
        results = self.process(batch, self.resources())
        table, written, rejects = self._written(results)
        tally = Tally(rows_read=len(batch), rows_written=len(written))
        for row in written:
            tally.counts.update(row.counts)
            if row.length is not None:
                tally.lengths[row.length] += 1
        return BatchResult(table, rejects, tally)

    def _written(self, results: list[WrittenRow | Reject]) -> tuple[pa.Table, list[WrittenRow], list[Reject]]:
        """The table of the written rows, the rows, and the rejects in input order.

        A value Arrow refuses (text with no UTF-8 form, a number out of range) would fail the whole batch: the
        batch is tried whole first, and only if that fails each row alone, a row Arrow refuses becoming a reject.
        """
        written = [result for result in results if isinstance(result, WrittenRow)]
        try:
            table = self.table([row.columns for row in written])
            return table, written, [result for result in results if isinstance(result, Reject)]
        except Exception:
            pass
        kept, rejects = [], []
        for result in results:
            if isinstance(result, WrittenRow):
                try:
                    self.table([result.columns])
                except Exception as error:
                    source, row_id = str(result.columns.get("source")), str(result.columns.get("id"))
                    result = Reject(source, row_id, "write", f"cannot be written: {type(error).__name__}: {error}")
            (kept if isinstance(result, WrittenRow) else rejects).append(result)
        return self.table([row.columns for row in kept]), kept, rejects


@functools.lru_cache(maxsize=4)
def _resources(worker: BatchWorker):
    # One set-up per process and run: loading a processor for every batch would dominate the run time.
    return worker.setup()


@dataclass
class StageSummary:
    """What a stage run did; `rows_read == rows_written + rows_rejected` always holds.

    Attributes:
        media: media items written, by column (`{"images": 4, "audios": 1}`).
    """

    out_dir: str
    rows_read: int = 0
    rows_written: int = 0
    media: Counter = field(default_factory=Counter)
    rejects_by_reason: Counter = field(default_factory=Counter)
    output_bytes: int = 0
    elapsed_s: float = 0.0
    engine: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_rejected(self) -> int:
        return sum(self.rejects_by_reason.values())

    def take(self, tally: Tally) -> None:
        """Fills the counts from the run's tally; stages with more counts extend this."""
        self.rows_read, self.rows_written = tally.rows_read, tally.rows_written
        self.media = Counter({modality.column: tally.counts.get(modality.column, 0) for modality in MODALITIES})

    def to_dict(self) -> dict[str, Any]:
        # Not `asdict`, which rebuilds a Counter from its items, counting them.
        summary = {item.name: getattr(self, item.name) for item in fields(self) if item.name not in ("media", "rejects_by_reason")}
        summary.update(self.media)
        summary["rows_rejected"] = self.rows_rejected
        summary["rejects_by_reason"] = dict(self.rejects_by_reason.most_common())
        return summary


Summary = TypeVar("Summary", bound=StageSummary)


class Stage(ABC, Generic[Summary]):
    """What a stage declares; `run_stage` does the rest."""

    name: str

    @abstractmethod
    def batches(self) -> Iterable[list]:
        """The input, in batches of ROWS_PER_BATCH rows, in a fixed order."""

    @abstractmethod
    def worker(self, scratch_dir: Path) -> BatchWorker:
        """The batch worker; `scratch_dir` is the run's folder for temporary files (downloads)."""

    @abstractmethod
    def summary(self, out_dir: str) -> Summary:
        """An empty summary of this stage's kind."""

    @abstractmethod
    def metadata(self, summary: Summary, executor: Executor) -> dict[str, Any]:
        """What `vlmdata.json` records besides the stage's name and its summary."""

    @abstractmethod
    def features(self) -> datasets.Features:
        """The output's features."""

    def total_rows(self) -> int | None:
        """The rows to read, if known before reading (for the progress bar)."""
        return None

    def before_commit(self, writer: ArrowFolderWriter) -> None:
        """Adds the stage's own files to the output before it is committed (the processor of tokenize)."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """The arguments that decide the output (not how or where it runs), in JSON form."""

    def job_key(self, rows_per_unit: int) -> str:
        """A digest of the stage, its settings and its units: a folder left by a killed run is taken up again
        only by the same job."""
        settings = json.dumps({"stage": self.name, "rows_per_unit": rows_per_unit, **self.settings()},
                              sort_keys=True, default=str)
        return hashlib.sha256(settings.encode("utf-8")).hexdigest()


def run_stage(
    stage: Stage[Summary],
    out_dir: str | Path,
    executor: Executor,
    *,
    strict: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    rows_per_unit: int = ROWS_PER_UNIT,
) -> Summary:
    """Runs `stage` with `executor` into `out_dir`, which appears only once complete.

    The input is cut into work units of `rows_per_unit` rows (a multiple of ROWS_PER_BATCH), each written as
    a shard file of its own.

    Raises:
        FatalError: with `strict`, at the first rejected row, naming it; or when the run cannot go on.
    """
    check_rows_per_unit(rows_per_unit)
    started = time.monotonic()
    summary = stage.summary(str(out_dir))
    tally, units = Tally(), 0
    job = stage.job_key(rows_per_unit) if executor.resumes else None
    out_dir = local_path(out_dir)
    folder_writer = UrlFolderWriter if is_url(out_dir) else ArrowFolderWriter
    with folder_writer(out_dir, stage.features(), overwrite=overwrite, job=job) as writer:
        worker = stage.worker(writer.scratch_dir)
        with RejectLog(writer.path_of(REJECTS_FILE), strict) as rejects, InBackground() as background, tqdm(
            total=stage.total_rows(), desc=stage.name, unit=" rows", disable=not progress, dynamic_ncols=True
        ) as bar:
            planned = work_units(stage.batches(), rows_per_unit // ROWS_PER_BATCH)
            for result in executor.map(worker, planned, writer.units_dir):
                for reject in result.rejects:
                    rejects.add(reject)
                if isinstance(result, WrittenUnit):  # its files, written by a remote worker
                    background.submit(writer.shards.adopt, result.paths)
                    units += 1
                else:
                    # Written on a thread of its own, outside the GIL mostly, while the next batch is worked on.
                    background.submit(writer.shards.write_table, result.table)
                    if result.ends_unit:
                        background.submit(writer.shards.end_shard)
                        units += 1
                tally.add(result.tally)
                bar.update(result.tally.rows_read)
                bar.set_postfix(units=units, rejected=rejects.count, refresh=False)
        summary.take(tally)
        summary.rejects_by_reason = rejects.by_reason
        summary.output_bytes = writer.finish_shards()
        summary.engine = {**executor.describe(), "units": units}
        summary.elapsed_s = round(time.monotonic() - started, 3)
        stage.before_commit(writer)
        metadata = {"stage": stage.name, **stage.metadata(summary, executor), "summary": summary.to_dict()}
        writer.add_file(METADATA_FILE, json.dumps(metadata, indent=2, default=str))
    return summary


def check_rows_per_unit(rows_per_unit: int) -> None:
    if rows_per_unit < ROWS_PER_BATCH or rows_per_unit % ROWS_PER_BATCH:
        raise FatalError(f"--rows-per-unit must be a multiple of {ROWS_PER_BATCH}, got {rows_per_unit}.")
