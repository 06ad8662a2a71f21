"""The statistics as (label, value) pairs and histograms: the terminal summary and the page's header share them."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from vlmdata.inspect.detect import SHARDS
from vlmdata.inspect.stats import MediaCounts, Statistics
from vlmdata.modalities import MODALITIES, Modality

LENGTH_BINS = 30
BAR_WIDTH = 30


@dataclass(frozen=True)
class Histogram:
    """Bars in order: (label, rows)."""

    title: str
    bars: list[tuple[str, int]]


def summary_rows(statistics: Statistics) -> list[tuple[str, str]]:
    """The headline figures, in reading order."""
    target = statistics.target
    rows = []
    if target.kind == SHARDS:
        model = target.metadata.get("model", {})
        template = target.metadata.get("chat_template", "?")
        rows.append(("model", f"{model.get('name', '?')} ({model.get('family', '?')}, template {template})"))
    rows.append(("rows", str(statistics.rows)))
    if target.kind == SHARDS:
        percentiles = statistics.length_percentiles()
        rows.append(("tokens", str(statistics.tokens)))
        shown = "/".join(str(percentiles.get(name, "-")) for name in ("p50", "p90", "p99", "max"))
        rows.append(("length p50/p90/p99/max", shown))
        rows.append(("trained tokens", f"{statistics.trained_tokens} ({statistics.trained_fraction:.1%})"))
    rows.extend(_media_rows(statistics))
    if statistics.rejects_by_reason or target.rejects_file is not None:
        rows.append(("rows rejected", str(sum(statistics.rejects_by_reason.values()))))
    return rows


def _media_rows(statistics: Statistics) -> list[tuple[str, str]]:
    media = statistics.media
    rows = []
    if media is not None:
        for modality in MODALITIES:
            rows.extend(_modality_rows(media, modality))
    if statistics.media_note:
        rows.append(("media", statistics.media_note))
    return rows


def _modality_rows(media: MediaCounts, modality: Modality) -> list[tuple[str, str]]:
    count = media.count(modality.kind)
    if modality.kind == "video" and count:
        return [(modality.label, str(count)), *_video_rows(media)]
    if not modality.pictures:
        return [(modality.label, str(count))]
    unreadable = f" ({media.unreadable_images} unreadable)" if media.unreadable_images else ""
    rows = [(modality.label, f"{count}{unreadable}")]
    sizes = media.size_range()
    if sizes:
        rows.append(("image sizes", " · ".join(f"{name} {w}×{h}" for name, (w, h) in sizes.items())))
    return rows


def _video_rows(media: MediaCounts) -> list[tuple[str, str]]:
    frames, tenths = media.frames_per_video, media.video_seconds
    total = sum(value * count for value, count in tenths.items()) / 10
    return [
        ("frames per video", f"min {min(frames)} · median {_median(frames)} · max {max(frames)}"),
        ("video seconds", f"total {total:.1f} · median {_median(tenths) / 10:.1f} · max {max(tenths) / 10:.1f}"),
    ]


def _median(counts: Counter) -> int:
    """The lower median of the values a histogram counts."""
    seen, middle = 0, (sum(counts.values()) + 1) // 2
    for value in sorted(counts):
        seen += counts[value]
        if seen >= middle:
            return value
    raise ValueError("an empty histogram has no median")


def histograms(statistics: Statistics) -> list[Histogram]:
    """Media items per row, of each kind the data has, and token lengths (binned) for shards."""
    result = []
    media = statistics.media
    if media is not None and statistics.rows:
        for modality in MODALITIES:
            if media.count(modality.kind):
                result.append(Histogram(f"{modality.label} per row", _counted(media.per_row[modality.kind])))
    if statistics.lengths:
        result.append(Histogram("token length", length_bins(statistics.lengths)))
    return result


def _counted(counts: Counter) -> list[tuple[str, int]]:
    # Every number from 0 to the largest gets a bar, so a gap reads as a gap.
    return [(str(number), counts.get(number, 0)) for number in range(max(counts) + 1)]


def length_bins(lengths: Counter, bins: int = LENGTH_BINS) -> list[tuple[str, int]]:
    """Token lengths grouped into at most `bins` bins of equal width, labelled "first–last"."""
    low, high = min(lengths), max(lengths)
    width = max(1, math.ceil((high - low + 1) / bins))
    counts: Counter = Counter()
    for length, rows in lengths.items():
        counts[(length - low) // width] += rows
    result = []
    for index in range(max(counts) + 1):
        first = low + index * width
        label = str(first) if width == 1 else f"{first}–{first + width - 1}"
        result.append((label, counts.get(index, 0)))
    return result


def terminal_lines(statistics: Statistics) -> list[str]:
    """The summary `vlmdata inspect` prints."""
    pairs = summary_rows(statistics)
    width = max(len(label) for label, _ in pairs)
    lines = [f"  {label:<{width}}  {value}" for label, value in pairs]
    for histogram in histograms(statistics):
        if histogram.title == "token length":
            continue  # the percentiles say it in one line; the page draws it
        lines.append(f"  {histogram.title}:")
        top = max(rows for _, rows in histogram.bars) or 1
        for label, rows in histogram.bars:
            lines.append(f"    {label:>6}  {'█' * math.ceil(BAR_WIDTH * rows / top):<{BAR_WIDTH}}  {rows}")
    if statistics.rejects_by_reason:
        where = statistics.target.rejects_file
        lines.append(f"  rejects by reason (details in {where}):")
        for reason, count in statistics.rejects_by_reason.most_common():
            lines.append(f"    {count:>6}  {reason}")
    return lines
