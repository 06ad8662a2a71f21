"""Video: decoded and sampled once in convert, stored as its sampled frames with their timestamps, handed to
the processor as those frames with their metadata, never sampled again."""

from __future__ import annotations

from typing import Any

import datasets

from vlmdata.errors import RowError
from vlmdata.media import MediaLoader
from vlmdata.media.loader import VIDEO_OPTION_KEYS
from vlmdata.modalities.base import Modality


def video_feature(frame: datasets.Image) -> dict[str, Any]:
    """One stored video: its sampled frames, the second of each in the source, the source's frame rate (None
    for a video given as its frames) and the source's frame count."""
    return {
        "frames": datasets.List(frame),
        "timestamps": datasets.List(datasets.Value("float64")),
        "fps": datasets.Value("float64"),
        "total_frames": datasets.Value("int64"),
    }


class VideoModality(Modality):
    kind = "video"
    column = "videos"
    source_columns = ("videos", "video")
    feature = video_feature(datasets.Image())
    item = "video"
    label = "videos"
    option_keys = VIDEO_OPTION_KEYS

    @property
    def undecoded_feature(self) -> dict[str, Any]:
        return video_feature(datasets.Image(decode=False))

    def load(self, payload: dict[str, Any], base_dir: str | None, loader: MediaLoader) -> dict[str, Any]:
        return loader.load_video(payload, base_dir)

    def processor_part(self, stored: dict[str, Any], position: int, processor) -> dict[str, Any]:
        raise RowError(f"video {position}: this processor is not given videos yet")


VIDEO = VideoModality()
