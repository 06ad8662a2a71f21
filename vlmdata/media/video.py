"""Turning a video file into the frames we store: checked from its header, sampled, decoded, encoded.

A video is read once, in convert: its header is checked first (length, frame size, that it has a video stream
at all), then only the sampled frames are decoded. Sampling is the same for every source: `video_frames` N
frames spread uniformly over the clip, or else `video_fps` F frames per second of the clip, never more than
`max_video_frames`; a part's own "num_frames" or "fps" wins over the options.

Decoded frames are stored as JPEG at quality 95, the quality convert re-encodes JPEG photos at: the source
codec has already quantised them, and PNG would cost about three times the bytes and five times the time for
no visible gain (bench/notes.md has the figures). A video given as its frames keeps each
frame as images keep theirs.

Example:
    >>> sampling = Sampling(frames=None, fps=2.0, max_frames=64)
    >>> video = decode_video(open("clip.mp4", "rb").read(), "'clip.mp4'", sampling)  # doctest: +SKIP
    >>> video.timestamps  # doctest: +SKIP
    [0.0, 0.5, 1.0, 1.5]
"""

from __future__ import annotations

import io
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from vlmdata.errors import RowError
from vlmdata.optional import require

# A target time is reached by the first frame at most half a frame before it, so that rounding in the
# container's time base never skips the frame meant.
TARGET_TOLERANCE_FRAMES = 0.5
# Targets closer than this to the last decoded frame are reached by decoding on: a seek would land on the
# same keyframe and decode the same frames again.
SEEK_GAP_SECONDS = 1.0
# Packets may end this many frames before the length a header states without the file being cut off.
TRUNCATION_MARGIN_FRAMES = 2


@dataclass(frozen=True)
class Sampling:
    """How many frames to take from a clip.

    Attributes:
        frames: take this many frames uniformly over the clip; None to use `fps`.
        fps: take this many frames per second of the clip.
        max_frames: never take more than this.
    """

    frames: int | None = None
    fps: float = 2.0
    max_frames: int = 64

    def count(self, duration: float, total_frames: int) -> int:
        """The number of frames to take from a clip of `duration` seconds and `total_frames` frames.

        Example:
            >>> Sampling(fps=2.0).count(3.0, 30)
            6
            >>> Sampling(frames=100, max_frames=64).count(3.0, 30)
            30
        """
        wanted = self.frames if self.frames is not None else max(1, round(duration * self.fps))
        return max(1, min(wanted, self.max_frames, total_frames))


@dataclass
class DecodedVideo:
    """The sampled frames of one video.

    Attributes:
        frames: RGB uint8 arrays [H, W, 3], in time order.
        timestamps: the second of each frame in the source, from its pts, counted from the stream's start.
        fps: the source's average frame rate.
        total_frames: the source's frame count, from its header or from counting its packets.
    """

    frames: list[np.ndarray] = field(default_factory=list)
    timestamps: list[float] = field(default_factory=list)
    fps: float | None = None
    total_frames: int = 0


@dataclass(frozen=True)
class Header:
    """What a container says of its video stream before any frame is decoded."""

    duration: float
    fps: float
    total_frames: int
    width: int
    height: int
    start: float


def decode_video(
    data: bytes,
    label: str,
    sampling: Sampling,
    max_seconds: float | None = None,
    max_pixels: int | None = None,
    seek: bool = True,
) -> DecodedVideo:
    """Decodes the sampled frames of an encoded video (MP4, WebM, MKV, AVI, ... whatever FFmpeg reads).

    Args:
        data: the encoded video.
        label: how error messages name the video, e.g. "'clip.mp4'".
        sampling: how many frames to take.
        max_seconds: refuse clips longer than this, from the header, before decoding.
        max_pixels: refuse frames with more pixels than this, from the header, before decoding.
        seek: seek to each sampled frame's keyframe; False decodes every frame (the same frames, slower).

    Returns:
        The sampled frames with their timestamps.

    Raises:
        RowError: not a video, a corrupt or truncated one, no video stream, too long, too large, or no frame.
    """
    av = require("av", "video", "video parts")
    if not data:
        raise RowError(f"cannot decode video {label}: the file is empty")
    with _open(av, data, label) as container:
        header = read_header(av, container, label)
    if max_seconds is not None and header.duration > max_seconds:
        raise RowError(
            f"video {label} is {header.duration:.1f} s long, over the limit of {max_seconds:g} s"
        )
    if max_pixels is not None and header.width * header.height > max_pixels:
        raise RowError(
            f"video {label} is too large to decode safely: frames of {header.width}x{header.height} = "
            f"{header.width * header.height} pixels, over the limit of {max_pixels}"
        )
    count = sampling.count(header.duration, header.total_frames)
    indices = np.linspace(0, header.total_frames - 1, count).round().astype(int)
    targets = [header.start + index / header.fps for index in sorted(set(indices.tolist()))]
    with _open(av, data, label) as container:
        decode = _decode_seeking if seek else _decode_all
        frames = decode(av, container, targets, header, label)
    if not frames:
        raise RowError(f"video {label} has no frame that decodes")
    if len(frames) < len(targets):
        reached = frames[-1][0] - header.start
        raise RowError(
            f"video {label} is truncated: its frames end at {reached:.2f} s of the {header.duration:.2f} s "
            "its header states"
        )
    return DecodedVideo(
        frames=[pixels for _, pixels in frames],
        timestamps=[round(time - header.start, 6) for time, _ in frames],
        fps=header.fps,
        total_frames=header.total_frames,
    )


def read_header(av, container, label: str) -> Header:
    """Reads the video stream's length, frame rate, frame count and size; counts packets where the container
    states no frame count (WebM, MKV).

    Raises:
        RowError: the container has no video stream, or states no usable frame rate or size.
    """
    if not container.streams.video:
        raise RowError(f"video {label} has no video stream")
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    width, height = stream.codec_context.width, stream.codec_context.height
    if fps <= 0 or not width or not height:
        raise RowError(f"cannot decode video {label}: its header states no frame rate or frame size")
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000
    total = stream.frames
    if not total:
        total, end = _count_packets(av, container, stream, label)
        # The header's length is written when the file is finished; packets that stop well short of it are
        # a file cut off, whose frame count would otherwise quietly shrink to what is left.
        end = start if end is None else end
        if duration and end - start < duration - max(TRUNCATION_MARGIN_FRAMES / fps, 0.05 * duration):
            raise RowError(
                f"video {label} is truncated: its packets end at {end - start:.2f} s of the {duration:.2f} s "
                "its header states"
            )
    if not duration or duration <= 0:
        duration = total / fps
    if total <= 0:
        raise RowError(f"video {label} has no frames")
    return Header(duration, fps, int(total), int(width), int(height), start)


def _count_packets(av, container, stream, label: str) -> tuple[int, float | None]:
    """The number of the stream's packets and the second the last one ends at (None when none states it)."""
    # Demuxing reads packet headers only, no pixels: cheap next to decoding.
    count, end = 0, None
    try:
        for packet in container.demux(stream):
            if not packet.size or packet.pts is None:
                continue
            count += 1
            finish = float((packet.pts + (packet.duration or 0)) * stream.time_base)
            end = finish if end is None else max(end, finish)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise RowError(f"video {label} is truncated or corrupt: {_reason(exc)}") from exc
    return count, end


def _decode_seeking(av, container, targets: list[float], header: Header, label: str) -> list:
    stream = container.streams.video[0]
    tolerance = TARGET_TOLERANCE_FRAMES / header.fps
    found: list[tuple[float, np.ndarray]] = []
    frames = None
    position = -math.inf
    try:
        for target in targets:
            if frames is None or target - position > SEEK_GAP_SECONDS:
                # Seek lands on the keyframe at or before the target; decoding on from there is exact.
                container.seek(int(target / stream.time_base), stream=stream, backward=True, any_frame=False)
                frames = iter(container.decode(stream))
            for frame in frames:
                if frame.pts is None:
                    continue
                position = float(frame.pts * stream.time_base)
                if position >= target - tolerance:
                    found.append((position, frame.to_ndarray(format="rgb24")))
                    break
            else:
                break  # the stream ended before the target
    except (av.FFmpegError, OSError, ValueError) as exc:
        _decoding_failed(found, label, exc)
    return found


def _decode_all(av, container, targets: list[float], header: Header, label: str) -> list:
    stream = container.streams.video[0]
    tolerance = TARGET_TOLERANCE_FRAMES / header.fps
    found: list[tuple[float, np.ndarray]] = []
    pending = list(targets)
    try:
        for frame in container.decode(stream):
            if not pending:
                break
            if frame.pts is None:
                continue
            position = float(frame.pts * stream.time_base)
            if position >= pending[0] - tolerance:
                found.append((position, frame.to_ndarray(format="rgb24")))
                pending.pop(0)
    except (av.FFmpegError, OSError, ValueError) as exc:
        _decoding_failed(found, label, exc)
    return found


def _decoding_failed(found: list, label: str, exc: BaseException) -> None:
    # Frames decoded before the error are not kept: a stream that breaks off is a truncated file.
    where = f" after {len(found)} sampled frames" if found else ""
    raise RowError(f"video {label} is truncated or corrupt: decoding failed{where}: {_reason(exc)}") from exc


@contextmanager
def _open(av, data: bytes, label: str) -> Iterator:
    """Opens a container held in memory, turning FFmpeg's refusal into a RowError."""
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.FFmpegError, OSError, ValueError) as exc:
        reason = f"not a video, or a truncated or corrupt one ({_reason(exc)})"
        raise RowError(f"cannot decode video {label}: {reason}") from exc
    try:
        yield container
    finally:
        container.close()


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
