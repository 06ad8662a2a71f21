"""Video: decoded and sampled once in convert, stored as its sampled frames with their timestamps, handed to
the processor as those frames with their metadata, never sampled again."""

from __future__ import annotations

from typing import Any

import datasets
import numpy as np
from PIL import Image

from vlmdata.errors import RowError
from vlmdata.media import MediaLoader
from vlmdata.media.loader import VIDEO_OPTION_KEYS
from vlmdata.modalities.base import Modality
from vlmdata.modalities.image import decode_stored

# The frame rate a video given as one frame has no timestamps to tell: the rate Qwen2-VL samples at.
DEFAULT_FPS = 2.0
# The key of a processor video part that holds its `VideoMetadata`; `vlmdata.processor_call` moves it into the
# processor's `videos_kwargs`, since a part itself carries no metadata to the processor.
METADATA_KEY = "video_metadata"


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
        frames = decoded_frames(stored, position)
        return video_part(np.stack([np.asarray(frame) for frame in frames]), stored["timestamps"],
                          stored["fps"], stored["total_frames"])

    def image_parts(self, stored: dict[str, Any], position: int) -> list[dict[str, Any]]:
        """The stored video's frames as consecutive image parts, for a family that takes no video."""
        return [{"type": "image", "image": frame} for frame in decoded_frames(stored, position)]


def decoded_frames(stored: dict[str, Any], position: int) -> list[Image.Image]:
    """A stored video's frames as RGB images, decoded as `datasets.Image` decodes them.

    Raises:
        RowError: the video has no frames, a frame cannot be decoded, or the frames differ in size.
    """
    frames = [
        decode_stored(frame, f"video {position} frame {index}").convert("RGB")
        for index, frame in enumerate(stored.get("frames") or [])
    ]
    if not frames:
        raise RowError(f"video {position} has no frames")
    if len({frame.size for frame in frames}) > 1:
        raise RowError(f"video {position}: its frames differ in size")
    return frames


def video_part(frames: np.ndarray, timestamps: list[float], fps: float | None, total_frames: int | None) -> dict[str, Any]:
    """The processor's part for sampled frames: `{"type": "video", "video": [T, H, W, 3] uint8}` and their
    `VideoMetadata`, so that the processor takes the frames as sampled and reads their times from it.

    Args:
        frames: the sampled frames, `[T, H, W, 3]` uint8.
        timestamps: the second of each frame in the source.
        fps: the source's frame rate; None for a video given as frames, whose rate is one frame per step of its
            timestamps (`DEFAULT_FPS` for a single frame).
        total_frames: the source's frame count; None counts the frames given.
    """
    from transformers.video_utils import VideoMetadata

    if fps is None:
        steps = np.diff(np.asarray(timestamps, dtype=np.float64))
        fps = float(1.0 / np.mean(steps)) if len(steps) and np.mean(steps) > 0 else DEFAULT_FPS
    indices = [int(round(second * fps)) for second in timestamps]
    metadata = VideoMetadata(
        total_num_frames=int(total_frames if total_frames is not None else len(frames)),
        fps=float(fps),
        frames_indices=indices,
        width=int(frames.shape[2]),
        height=int(frames.shape[1]),
    )
    return {"type": "video", "video": frames, METADATA_KEY: metadata}


VIDEO = VideoModality()
