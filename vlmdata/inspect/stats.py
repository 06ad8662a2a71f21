"""The statistics of a dataset folder or rejects file, gathered in one pass that decodes no image.

Only the needed columns are read (`columns.batches`), image sizes come from file headers, and every figure
is kept as a histogram, so memory grows with the number of distinct values (lengths, image sizes), never
with the number of rows.

Example:
    >>> statistics = collect(detect("out/shards"))  # doctest: +SKIP
    >>> statistics.length_percentiles()["p50"], round(statistics.trained_fraction, 2)  # doctest: +SKIP
    (64, 0.28)
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
from tqdm import tqdm

from vlmdata.accounting import length_percentiles, reason_category
from vlmdata.errors import FatalError
from vlmdata.inspect.columns import batches, count_rows, list_lengths
from vlmdata.inspect.detect import NORMALISED, REJECTS, SHARDS, Target, input_data
from vlmdata.inspect.images import header_sizes
from vlmdata.inspect.videos import video_summaries
from vlmdata.labels import IGNORE_INDEX
from vlmdata.modalities import KINDS, MODALITIES


@dataclass
class MediaCounts:
    """The media items of a set of rows, for each kind of `vlmdata.modalities.MODALITIES`.

    Attributes:
        rows: how many rows were counted.
        per_row: for each kind, how many rows have each number of items of that kind.
        image_sizes: how many pictures (images) have each (width, height).
        unreadable_images: pictures whose header cannot be read.
        frames_per_video: how many videos store each number of sampled frames.
        video_seconds: how many videos last each duration, in tenths of a second.
    """

    rows: int = 0
    per_row: dict[str, Counter] = field(default_factory=lambda: {kind: Counter() for kind in KINDS})
    image_sizes: Counter = field(default_factory=Counter)
    unreadable_images: int = 0
    frames_per_video: Counter = field(default_factory=Counter)
    video_seconds: Counter = field(default_factory=Counter)

    def count(self, kind: str) -> int:
        """How many items of `kind` the rows hold."""
        return sum(count * rows for count, rows in self.per_row[kind].items())

    @property
    def images_per_row(self) -> Counter:
        return self.per_row["image"]

    @property
    def audios_per_row(self) -> Counter:
        return self.per_row["audio"]

    @property
    def images(self) -> int:
        return self.count("image")

    @property
    def audios(self) -> int:
        return self.count("audio")

    def size_range(self) -> dict[str, tuple[int, int]]:
        """The smallest, median and largest image size, ordered by pixel count; {} without images."""
        ordered = sorted(self.image_sizes.items(), key=lambda item: (item[0][0] * item[0][1], item[0]))
        total = sum(self.image_sizes.values())
        if not total:
            return {}
        seen, median = 0, ordered[-1][0]
        for size, count in ordered:
            seen += count
            if seen >= total / 2:
                median = size
                break
        return {"min": ordered[0][0], "median": median, "max": ordered[-1][0]}


@dataclass
class Statistics:
    """What `vlmdata inspect` reports about one path.

    Attributes:
        target: what was inspected.
        rows: rows of the dataset, or lines of the rejects file.
        media: the rows' images and audio; None when unknown (shards whose input data is gone).
        media_note: why `media` is None, or where it came from.
        lengths: token shards only: how many rows have each length.
        tokens, trained_tokens: token shards only: all tokens, and those whose label is not -100.
        rejects_by_reason: rejected rows grouped as in the stages' own summaries.
    """

    target: Target
    rows: int = 0
    media: MediaCounts | None = None
    media_note: str | None = None
    lengths: Counter = field(default_factory=Counter)
    tokens: int = 0
    trained_tokens: int = 0
    rejects_by_reason: Counter = field(default_factory=Counter)

    @property
    def trained_fraction(self) -> float:
        return self.trained_tokens / self.tokens if self.tokens else 0.0

    def length_percentiles(self) -> dict[str, int]:
        """p50, p90, p99, min and max of the token lengths (nearest rank); {} without rows."""
        return length_percentiles(self.lengths)


def collect(target: Target, progress: bool = False) -> Statistics:
    """Gathers the statistics of `target` in one pass over the columns they need."""
    statistics = Statistics(target)
    if target.rejects_file is not None:
        statistics.rejects_by_reason = read_rejects(target.rejects_file)
    if target.kind == REJECTS:
        statistics.rows = sum(statistics.rejects_by_reason.values())
        return statistics
    with tqdm(total=count_rows(target.data_files), desc="inspect", unit=" rows", disable=not progress) as bar:
        if target.kind == NORMALISED:
            statistics.media = count_media(target.data_files, bar.update)
            statistics.rows = statistics.media.rows
        elif target.kind == SHARDS:
            _count_tokens(target, statistics, bar.update)
            _count_shard_media(target, statistics)
    return statistics


def read_rejects(file: Path) -> Counter:
    """Rejected rows by "stage: reason", reasons grouped as `accounting.reason_category` groups them."""
    by_reason: Counter = Counter()
    with open(file, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                by_reason[f"{record['stage']}: {reason_category(str(record['reason']))}"] += 1
            except (ValueError, KeyError, TypeError):
                message = f"Line {number} of {str(file)!r} is not a reject (source, id, stage, reason)."
                raise FatalError(message) from None
    return by_reason


def count_media(files, advance=None, keep: Iterator[tuple[str, str]] | None = None) -> MediaCounts | None:
    """Counts the media items of a normalised dataset's rows, and reads the sizes of its pictures.

    Args:
        files: the dataset's Arrow files.
        advance: called with the number of rows read after each batch (a progress bar).
        keep: when given, only the rows whose (source, id) come next in this ordered stream are counted.

    Returns:
        The counts, or None when `keep` holds a row that the files do not (so they are not its input).
    """
    media = MediaCounts()
    pending = next(keep, None) if keep is not None else None
    pictures = [modality for modality in MODALITIES if modality.pictures]
    for batch in batches(files, [*(modality.column for modality in MODALITIES), "source", "id"]):
        lengths = {modality.kind: _lengths(batch, modality.column) for modality in MODALITIES}
        sizes = {modality.kind: iter(_sizes(batch, modality.column)) for modality in pictures}
        videos = iter(_video_summaries(batch))
        keys = zip(batch.column("source").to_pylist(), batch.column("id").to_pylist()) if keep is not None else None
        for row in range(batch.num_rows):
            row_sizes = [next(sizes[kind]) for kind in sizes for _ in range(lengths[kind][row])]
            row_videos = [next(videos) for _ in range(lengths["video"][row])]
            if keep is not None:
                if next(keys) != pending:
                    continue
                pending = next(keep, None)
            media.rows += 1
            for kind, counts in lengths.items():
                media.per_row[kind][counts[row]] += 1
            media.image_sizes.update(size for size in row_sizes if size is not None)
            media.unreadable_images += sum(size is None for size in row_sizes)
            media.frames_per_video.update(frames for frames, _ in row_videos)
            media.video_seconds.update(round(seconds * 10) for _, seconds in row_videos)
        if advance is not None:
            advance(batch.num_rows)
    return media if keep is None or pending is None else None


def _lengths(batch, column: str) -> list[int]:
    # A dataset made elsewhere may lack a kind's column: its rows have none of that kind.
    return list_lengths(batch.column(column)) if column in batch.schema.names else [0] * batch.num_rows


def _sizes(batch, column: str) -> list[tuple[int, int] | None]:
    return header_sizes(batch.column(column)) if column in batch.schema.names else []


def _video_summaries(batch) -> list[tuple[int, float]]:
    return video_summaries(batch.column("videos")) if "videos" in batch.schema.names else []


def _count_tokens(target: Target, statistics: Statistics, advance) -> None:
    for batch in batches(target.data_files, ["length", "labels"]):
        lengths = batch.column("length").to_numpy(zero_copy_only=False)
        statistics.lengths.update(lengths.tolist())
        statistics.tokens += int(lengths.sum())
        labels = pc.list_flatten(batch.column("labels")).to_numpy(zero_copy_only=False)
        statistics.trained_tokens += int(np.count_nonzero(labels != IGNORE_INDEX))
        statistics.rows += batch.num_rows
        advance(batch.num_rows)


def _count_shard_media(target: Target, statistics: Statistics) -> None:
    # The shards keep no images: they are counted in the input data, on the rows that the shards hold.
    # Tokenize writes rows in input order, so one ordered walk over both finds them without an index.
    source = input_data(target)
    if source is None:
        recorded = target.metadata.get("arguments", {}).get("data")
        statistics.media_note = f"input data {recorded!r} not found" if recorded else "no input data recorded"
        return
    statistics.media = count_media(source.data_files, keep=_shard_keys(target))
    if statistics.media is None:
        statistics.media_note = f"the input data {str(source.path)!r} no longer matches the shards"
    else:
        statistics.media_note = f"from the input data {str(source.path)!r}"


def _shard_keys(target: Target) -> Iterator[tuple[str, str]]:
    for batch in batches(target.data_files, ["source", "id"]):
        yield from zip(batch.column("source").to_pylist(), batch.column("id").to_pylist())
