"""Videos as inspect shows them: frame counts and durations read from the stored structs without decoding a
frame, and each video as a strip of its sampled frames with their timestamps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from vlmdata.inspect.images import Thumbnail, thumbnail

# A strip shows at most this many frames, spread over the video, so a 64-frame clip stays one line.
STRIP_FRAMES = 8
STRIP_SIDE = 96


@dataclass(frozen=True)
class VideoStrip:
    """One stored video as a card shows it.

    Attributes:
        frames: thumbnails of some of its sampled frames, with `timestamps` (seconds in the source) of each.
        sampled: how many frames the video stores.
        duration: seconds of the source clip, or of the frames given (`duration`).
    """

    frames: list[Thumbnail] = field(default_factory=list)
    timestamps: list[float] = field(default_factory=list)
    sampled: int = 0
    duration: float = 0.0


def duration(fps: float | None, total_frames: int | None, last_timestamp: float | None) -> float:
    """Seconds of a stored video: its source's frame count over its frame rate, or for a video given as its
    frames (no frame rate) the time of its last frame."""
    if fps and total_frames:
        return total_frames / fps
    return float(last_timestamp) if last_timestamp is not None else 0.0


def video_summaries(videos: pa.Array) -> list[tuple[int, float]]:
    """(stored frames, duration in seconds) of each video of an Arrow list<video struct> column, in order.

    Only the frames' list offsets and the small fields are read; no frame's bytes are touched.
    """
    flat = videos.flatten()
    if not len(flat):
        return []
    frame_counts = pa.compute.list_value_length(flat.field("frames")).fill_null(0).to_pylist()
    fps = flat.field("fps").to_pylist()
    totals = flat.field("total_frames").to_pylist()
    last_times = [times[-1] if times else None for times in flat.field("timestamps").to_pylist()]
    return [(count, duration(rate, total, last)) for count, rate, total, last in zip(frame_counts, fps, totals, last_times)]


def strip(video: dict[str, Any] | None) -> VideoStrip:
    """The strip of a video stored as the normalised dataset stores it (frames as {bytes, path})."""
    if not video:
        return VideoStrip()
    frames = video.get("frames") or []
    times = video.get("timestamps") or []
    step = max(1, -(-len(frames) // STRIP_FRAMES))
    shown = list(range(0, len(frames), step))
    return VideoStrip(
        frames=[thumbnail(frames[i], STRIP_SIDE) for i in shown],
        timestamps=[float(times[i]) if i < len(times) else float("nan") for i in shown],
        sampled=len(frames),
        duration=duration(video.get("fps"), video.get("total_frames"), times[-1] if times else None),
    )
