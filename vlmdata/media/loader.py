"""The one entry point of media loading: a content part's payload in, a stored image, audio clip or video out."""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

import numpy as np
from PIL import Image

from vlmdata.errors import RowError
from vlmdata.media.audio import decode_audio, prepare_audio
from vlmdata.media.fetch import Fetcher
from vlmdata.media.files import read_media_file, resolve_media_path, stored_file_name
from vlmdata.media.images import prepare_image, prepare_pil_image
from vlmdata.media.options import MediaOptions
from vlmdata.media.video import Sampling, decode_video

# Where a part's media can be found besides in the part itself, under a key named after its kind ("image").
ADDRESS_KEYS = ("path", "url", "base64")
# A video part's own sampling, which wins over the options' (`vlmdata.modalities.video.VideoModality`).
VIDEO_OPTION_KEYS = ("num_frames", "fps")


@dataclass(frozen=True)
class EncodedMedia:
    """Encoded media bytes, with the name the output keeps and the label error messages use."""

    data: bytes
    name: str | None
    label: str


class MediaLoader:
    """Loads the media of content parts for the convert stage; build one per worker process.

    Example:
        >>> loader = MediaLoader(MediaOptions(resize=Resize(512, 512)))  # doctest: +SKIP
        >>> loader.load_image({"path": "cat.jpg"}, base_dir="/data/set")  # doctest: +SKIP
        {'bytes': b'\\xff\\xd8...', 'path': 'cat.jpg'}
    """

    def __init__(self, options: MediaOptions):
        self.options = options
        self.fetcher = Fetcher(options)

    def load_image(self, part: dict, base_dir: str | None) -> dict:
        """Loads one image part's payload and returns it ready for `datasets.Image()`.

        Args:
            part: exactly one of "image" (PIL image, or {"bytes", "path"} as datasets stores images), "path"
                (absolute, or relative to media_root if set, else to base_dir; "file://" allowed; with a
                media_root, it must resolve inside it), "url"
                (http(s), or a data: URI) and "base64" (raw, or a data:image/...;base64,... URI).
            base_dir: the folder relative paths resolve against when no media_root is set.

        Returns:
            {"bytes": encoded image, "path": the file name or URL, or None}

        Raises:
            RowError: the payload is missing, ambiguous, unreachable or not a valid image.
        """
        key, value = payload_of(part, "image")
        resize, max_pixels = self.options.resize, self.options.max_image_pixels
        if key == "image" and isinstance(value, Image.Image):
            name = stored_file_name(getattr(value, "filename", "") or None)
            label = f"'{name}'" if name else "given as a PIL image"
            return {"bytes": prepare_pil_image(value, label, resize, max_pixels), "path": name}
        source = self.read_encoded(key, value, base_dir, "image")
        return {"bytes": prepare_image(source.data, source.label, resize, max_pixels), "path": source.name}

    def load_audio(self, part: dict, base_dir: str | None) -> dict:
        """Loads one audio part's payload as mono float32 at `options.audio_sampling_rate`.

        Args:
            part: exactly one of "audio" (an array already at the target rate, {"array", "sampling_rate"} as
                datasets decodes audio, or {"bytes", "path"}), "path", "url" and "base64".
            base_dir: the folder relative paths resolve against when no media_root is set.

        Returns:
            {"array": 1-D float32 array, "sampling_rate": options.audio_sampling_rate}

        Raises:
            RowError: the payload is missing, ambiguous, unreachable or not valid audio.
        """
        target_rate = self.options.audio_sampling_rate
        key, value = payload_of(part, "audio")
        if key == "audio" and isinstance(value, dict) and "array" in value:
            rate = value.get("sampling_rate") or target_rate
            return prepare_audio(value["array"], rate, target_rate, "given as an array")
        if key == "audio" and isinstance(value, (np.ndarray, list, tuple)):
            return prepare_audio(value, target_rate, target_rate, "given as an array")
        source = self.read_encoded(key, value, base_dir, "audio")
        samples, rate = decode_audio(source.data, source.label)
        return prepare_audio(samples, rate, target_rate, source.label)

    def load_video(self, part: dict, base_dir: str | None) -> dict:
        """Loads one video part's payload as its sampled frames (`vlmdata.modalities.video.video_feature`).

        A video file is sampled (`vlmdata.media.video`); a video given as its frames is taken as it is, timed
        at `video_fps` (or the part's "fps") frames per second.

        Args:
            part: exactly one of "video" (a uint8 array [T, H, W, 3], a list of frames as PIL images, arrays
                or paths, raw bytes, or {"bytes", "path"}), "path" (a file, or a list of frame files), "url"
                and "base64" (raw, or a data:video/...;base64,... URI); optionally "num_frames" or "fps",
                which win over the options' sampling.
            base_dir: the folder relative paths resolve against when no media_root is set.

        Returns:
            {"frames": [{"bytes", "path"}], "timestamps": [seconds], "fps": source fps or None,
            "total_frames": the source's frame count}

        Raises:
            RowError: the payload is missing, ambiguous, unreachable or not a valid video, or breaks a limit.
        """
        options = self.options
        sampling = self._sampling(part)
        key, value = payload_of(part, "video")
        if key == "video" and isinstance(value, np.ndarray):
            if value.ndim != 4:
                raise RowError(f"video given as an array must be [frames, height, width, 3], got {value.shape}")
            return self._frames_list(list(value), sampling.fps, base_dir)
        if key in ("video", "path") and isinstance(value, (list, tuple)):
            return self._frames_list(list(value), sampling.fps, base_dir)
        source = self.read_encoded(key, value, base_dir, "video")
        video = decode_video(
            source.data, source.label, sampling, options.max_video_seconds, options.max_image_pixels
        )
        frames = [
            {"bytes": prepare_pil_image(Image.fromarray(pixels), f"frame {i} of {source.label}", options.resize,
                                        as_jpeg=True),
             "path": None}
            for i, pixels in enumerate(video.frames)
        ]
        return {"frames": frames, "timestamps": video.timestamps, "fps": video.fps, "total_frames": video.total_frames}

    def _sampling(self, part: dict) -> Sampling:
        """The options' sampling with the part's own "num_frames" or "fps" in their place."""
        frames, fps = self.options.video_frames, self.options.video_fps
        if part.get("num_frames") is not None:
            frames = part["num_frames"]
            if isinstance(frames, bool) or not isinstance(frames, int) or frames <= 0:
                raise RowError(f"video part's num_frames must be a positive integer, got {frames!r}")
        elif part.get("fps") is not None:
            fps = part["fps"]
            if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
                raise RowError(f"video part's fps must be a positive number, got {fps!r}")
            frames = None
        return Sampling(frames=frames, fps=float(fps), max_frames=self.options.max_video_frames)

    def _frames_list(self, frames: list, fps: float, base_dir: str | None) -> dict:
        """A video given as its frames: each frame checked and stored as an image, all of one size, timed at `fps`."""
        options = self.options
        if not frames:
            raise RowError("video given as frames has no frames")
        if len(frames) > options.max_video_frames:
            raise RowError(
                f"video given as frames has {len(frames)} frames, over the limit of {options.max_video_frames}"
            )
        stored, sizes = [], []
        for i, frame in enumerate(frames):
            label = f"frame {i} of a video given as frames"
            if isinstance(frame, np.ndarray):
                if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                    raise RowError(f"{label} must be a uint8 array [H, W, 3], got {frame.dtype} {frame.shape}")
                frame = Image.fromarray(frame)
            if isinstance(frame, Image.Image):
                sizes.append(frame.size)
                stored.append({"bytes": prepare_pil_image(frame, label, options.resize, options.max_image_pixels),
                               "path": None})
                continue
            source = self.read_encoded("image", frame, base_dir, "image")
            sizes.append(_encoded_size(source.data, source.label))
            data = prepare_image(source.data, source.label, options.resize, options.max_image_pixels)
            stored.append({"bytes": data, "path": source.name})
        if len(set(sizes)) > 1:
            listed = ", ".join(f"{w}x{h}" for w, h in dict.fromkeys(sizes))
            raise RowError(f"video given as frames has frames of different sizes ({listed}); all must be one size")
        return {
            "frames": stored,
            "timestamps": [i / fps for i in range(len(stored))],
            "fps": None,
            "total_frames": len(stored),
        }

    def read_encoded(self, key: str, value, base_dir: str | None, kind: str) -> EncodedMedia:
        """Fetches the encoded bytes behind one payload (`payload_of`) of a part of `kind`.

        Args:
            key: "path", "url", "base64", or `kind` itself for embedded bytes ({"bytes", "path"}, raw bytes,
                or a string naming the media).
            value: the payload's value.
            base_dir: the folder relative paths resolve against when no media_root is set.
            kind: the part's type, which error messages name.

        Raises:
            RowError: the payload is malformed, unreachable or outside the media root.
        """
        if key == kind:
            return self._read_embedded(value, base_dir, kind)
        if not isinstance(value, str):
            raise RowError(f"{kind} part's {key!r} must be a string, got {type(value).__name__}")
        if key == "base64" or (key == "url" and value.startswith("data:")):
            return EncodedMedia(_decode_base64(value, kind), None, "from base64 data")
        if key == "url" or _is_http(value):
            return EncodedMedia(self.fetcher.fetch(value), value, f"'{value}'")
        path = resolve_media_path(value, base_dir, self.options.media_root, kind)
        data = read_media_file(path, value, kind, self.options.max_file_bytes)
        return EncodedMedia(data, stored_file_name(value), f"'{value}'")

    def _read_embedded(self, value, base_dir: str | None, kind: str) -> EncodedMedia:
        if isinstance(value, (bytes, bytearray, memoryview)):
            return EncodedMedia(bytes(value), None, "from embedded bytes")
        if isinstance(value, str):
            key = "url" if _is_http(value) or value.startswith("data:") else "path"
            return self.read_encoded(key, value, base_dir, kind)
        if not isinstance(value, dict):
            raise RowError(f"{kind} part's {kind!r} has an unsupported type {type(value).__name__}")
        data, path = value.get("bytes"), value.get("path")
        if path is not None and not isinstance(path, str):
            raise RowError(f"{kind} part's path must be a string, got {type(path).__name__}")
        if data is not None:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise RowError(f"{kind} part's bytes must be binary data, got {type(data).__name__}")
            label = f"'{path}'" if path else "from embedded bytes"
            return EncodedMedia(bytes(data), stored_file_name(path), label)
        if path:
            return self.read_encoded("path", path, base_dir, kind)
        raise RowError(f"{kind} part's {kind!r} has neither bytes nor a path")


def payload_of(part: dict, kind: str) -> tuple[str, object]:
    """Returns the single (key, value) payload of a part of `kind`: its own key (`kind`) or an address key.

    Other keys (like "type") are not payloads.

    Raises:
        RowError: the part has no payload, or several.
    """
    keys = (kind, *ADDRESS_KEYS)
    found = [key for key in keys if part.get(key) is not None]
    if len(found) == 1:
        return found[0], part[found[0]]
    if not found:
        present = ", ".join(sorted(str(key) for key in part if key != "type")) or "none"
        raise RowError(f"{kind} part has no payload: expected one of {', '.join(keys)}; keys present: {present}")
    raise RowError(f"{kind} part has several payloads ({', '.join(found)}); expected exactly one")


def _decode_base64(text: str, kind: str) -> bytes:
    """Decodes raw base64 or a data: URI (base64 or percent-encoded)."""
    if text.startswith("data:"):
        header, comma, body = text.partition(",")
        if not comma:
            raise RowError(f"invalid {kind} data URI: no ',' after the header")
        if not header.endswith(";base64"):
            return unquote_to_bytes(body)
        text = body
    compact = "".join(text.split())
    try:
        # Some writers drop the trailing padding; restoring it is unambiguous.
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RowError(f"invalid base64 {kind} data: {exc}") from exc


def _encoded_size(data: bytes, label: str) -> tuple[int, int]:
    """The width and height an encoded image's header states."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception as exc:  # any Pillow failure here is a bad image, which prepare_image names
        raise RowError(f"cannot decode image {label}: {exc or type(exc).__name__}") from exc


def _is_http(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))
