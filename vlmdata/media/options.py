"""Settings that decide how media are loaded and resized."""

from __future__ import annotations

import re
from dataclasses import dataclass

RESIZE_ALGORITHMS = ("bilinear", "bicubic", "lanczos", "nearest")
RESIZE_MODES = ("letterbox", "exact", "fit")
# Pillow's own default bomb limit (about 89.5 million pixels), fixed here so that no other library's setting
# changes which images a run accepts.
DEFAULT_MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3
DEFAULT_MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_FILE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Resize:
    """How every image is resized.

    Modes (axolotl's `image_size` semantics are the defaults):
        letterbox: scale to fit inside width x height keeping the aspect ratio, pad the rest (`--image-size N`).
        exact: stretch to exactly width x height (`--image-size WxH`).
        fit: scale so that the longest side is max(width, height), aspect kept, no padding (`--resize-mode fit`).
    """

    width: int
    height: int
    mode: str = "letterbox"
    algorithm: str = "bilinear"

    @classmethod
    def parse(cls, size: str | int, mode: str | None = None, algorithm: str = "bilinear") -> "Resize":
        """Builds a Resize from the command line's `--image-size N|WxH` and `--resize-mode`.

        Example:
            >>> Resize.parse("512")
            Resize(width=512, height=512, mode='letterbox', algorithm='bilinear')
            >>> Resize.parse("640x480")
            Resize(width=640, height=480, mode='exact', algorithm='bilinear')
        """
        text = str(size).strip().lower()
        match = re.fullmatch(r"(\d+)(?:x(\d+))?", text)
        if not match:
            raise ValueError(f"image size must be N or WxH (e.g. 512 or 640x480), got {size!r}")
        width = int(match.group(1))
        height = int(match.group(2)) if match.group(2) else width
        if width <= 0 or height <= 0:
            raise ValueError(f"image size must be positive, got {size!r}")
        if mode is None:
            mode = "exact" if match.group(2) else "letterbox"
        if mode not in RESIZE_MODES:
            raise ValueError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
        if algorithm not in RESIZE_ALGORITHMS:
            raise ValueError(f"resize algorithm must be one of {', '.join(RESIZE_ALGORITHMS)}, got {algorithm!r}")
        return cls(width, height, mode, algorithm)


@dataclass(frozen=True)
class MediaOptions:
    """Everything media loading depends on; one instance is shared by all rows of a run.

    Attributes:
        resize: how to resize images, or None to keep their size.
        audio_sampling_rate: audio is resampled to this rate, mono.
        media_root: relative paths resolve against this folder instead of the source file's folder.
            When set, it is also a sandbox: a path that resolves outside it (through "..", an absolute path or a
            symbolic link) is refused.
        timeout: seconds an HTTP server may take to accept the connection, and to send each next piece of the
            answer, per attempt.
        retries: extra attempts after a 5xx answer or a connection error.
        download_deadline: seconds one URL may take in all, every attempt, redirect and pause included, so that
            a server sending a byte now and then cannot hold a row for ever.
        max_download_bytes: a download larger than this is refused.
        block_private_urls: refuse URLs whose host resolves to a loopback, private, link-local or otherwise
            non-public address, checked again at every redirect and on the connected socket itself.
        max_file_bytes: a media file on disk (or in an archive) larger than this is refused.
        max_image_pixels: an image with more pixels than this is refused before its pixels are decoded.
        cache_dir: where downloads are kept for the rest of the run, so a URL used by many rows is fetched once;
            None keeps them in memory only.
        video_frames: take this many frames uniformly over each video; None to sample by `video_fps`.
        video_fps: take this many frames per second of each video (also the rate a video given as its frames
            is timed at).
        max_video_frames: never take more frames than this from one video.
        max_video_seconds: a video longer than this is refused from its header, before decoding.
    """

    resize: Resize | None = None
    audio_sampling_rate: int = 16000
    media_root: str | None = None
    timeout: float = 10.0
    retries: int = 3
    download_deadline: float = 60.0
    max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES
    block_private_urls: bool = False
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    cache_dir: str | None = None
    video_frames: int | None = None
    video_fps: float = 2.0
    max_video_frames: int = 64
    max_video_seconds: float = 600.0
