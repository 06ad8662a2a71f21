"""Turning image bytes into the bytes we store: validated, upright, RGB, resized.

The promise: every stored image decodes fully, is RGB, stands the right way up and has the requested size.
When an image already satisfies all of that, its original bytes are kept untouched, so converting a dataset
that needs no change costs no quality. "Decodes" means with the strictest decoder a training pipeline may use:
Pillow reads some damaged PNGs that libpng (torchvision's `decode_png`) refuses, and those are re-encoded.

Example:
    >>> from vlmdata.media.options import Resize
    >>> stored = prepare_image(open("cat.jpg", "rb").read(), "'cat.jpg'", Resize(512, 512))  # doctest: +SKIP
"""

from __future__ import annotations

import io
import re
import struct
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from vlmdata.errors import RowError
from vlmdata.media.options import Resize

RESAMPLING = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "nearest": Image.Resampling.NEAREST,
}
# axolotl pads `image_size: N` letterboxes with black; the same config must give the same pixels here.
LETTERBOX_COLOR = (0, 0, 0)
# Transparent areas become white: that is how viewers show them, so that is what a caption describes.
ALPHA_BACKGROUND = (255, 255, 255)
KEPT_FORMATS = {"JPEG", "PNG", "WEBP"}
JPEG_FAMILY = {"JPEG", "MPO"}
JPEG_QUALITY = 95
# Decode at a reduced JPEG scale only down to twice the final size, so the last resize still smooths properly
# (the same margin as Pillow's own thumbnail()).
DRAFT_MARGIN = 2
ROTATING_ORIENTATIONS = {5, 6, 7, 8}
# Pillow's format plugins raise any of these on malformed or hostile files; all of them mean "bad image".
MALFORMED_FILE_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, ZeroDivisionError, struct.error,
    MemoryError,
)
HIGH_DEPTH_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


@dataclass(frozen=True)
class ResizePlan:
    """Where a resized image ends up: `content` is the size of the scaled picture, pasted centred on a
    `canvas` of the pad colour (the two are equal unless letterboxing)."""

    content: tuple[int, int]
    canvas: tuple[int, int]


def plan_resize(size: tuple[int, int], resize: Resize | None) -> ResizePlan | None:
    """Works out the final geometry for an upright image of `size`, or None when it keeps its size.

    letterbox and exact follow axolotl (`image_size: N` and `image_size: [W, H]`) and so also enlarge small
    images; fit only ever shrinks, since enlarging adds pixels without adding detail.

    Example:
        >>> plan_resize((1000, 500), Resize(200, 200, "letterbox"))
        ResizePlan(content=(200, 100), canvas=(200, 200))
        >>> plan_resize((100, 50), Resize(200, 200, "fit")) is None
        True
    """
    if resize is None:
        return None
    width, height = size
    if resize.mode == "exact":
        plan = ResizePlan((resize.width, resize.height), (resize.width, resize.height))
    elif resize.mode == "fit":
        scale = max(resize.width, resize.height) / max(width, height)
        if scale >= 1:
            return None
        content = (max(1, round(width * scale)), max(1, round(height * scale)))
        plan = ResizePlan(content, content)
    elif resize.mode == "letterbox":
        plan = ResizePlan(_letterbox_content(size, resize.width, resize.height), (resize.width, resize.height))
    else:
        raise ValueError(f"unknown resize mode {resize.mode!r}")
    if plan.content == size and plan.canvas == size:
        return None
    return plan


def _letterbox_content(size: tuple[int, int], width: int, height: int) -> tuple[int, int]:
    # Rounded the way Pillow's ImageOps.pad rounds, which is what axolotl calls.
    source_ratio = size[0] / size[1]
    target_ratio = width / height
    if source_ratio > target_ratio:
        return width, max(1, round(size[1] / size[0] * width))
    if source_ratio < target_ratio:
        return max(1, round(size[0] / size[1] * height)), height
    return width, height


def prepare_image(
    data: bytes, label: str, resize: Resize | None, max_pixels: int | None = None
) -> bytes:
    """Validates encoded image bytes and returns the bytes to store.

    Args:
        data: the encoded image as found (JPEG, PNG, GIF, WEBP, TIFF, ...).
        label: how error messages name the image, e.g. "'cat.jpg'".
        resize: the requested size, or None to keep it.
        max_pixels: refuse images with more pixels than this, from their header, before any pixel is
            decoded; None keeps the limit Pillow has at the time.

    Returns:
        `data` itself when the image is already a decodable, upright RGB JPEG/PNG/WEBP of the right size;
        otherwise the image re-encoded (JPEG quality 95 for JPEG sources, else PNG).

    Raises:
        RowError: the bytes are not a complete, decodable image, or it has more than `max_pixels` pixels.
    """
    if not data:
        raise RowError(f"cannot decode image {label}: the file is empty")
    decodable, strictly_valid = check_png_chunks(data) if data.startswith(PNG_SIGNATURE) else (data, True)
    with strict_decoding(label, max_pixels):
        image = Image.open(io.BytesIO(decodable))
        source_format = image.format
        opened_as_rgb = image.mode == "RGB" and "transparency" not in image.info
        animated = bool(getattr(image, "is_animated", False))
        if source_format not in JPEG_FAMILY:
            # Other formats may store EXIF after the pixels (PNG's eXIf chunk), so reading it decodes them.
            image.load()
        orientation = _orientation(image)
        upright = _upright_size(image.size, orientation)
        plan = plan_resize(upright, resize)
        if source_format in JPEG_FAMILY and plan is not None:
            _draft_for(image, plan, upright, orientation)
        image.load()

    unchanged = (
        plan is None
        and strictly_valid
        and opened_as_rgb
        and orientation == 1
        and not animated
        and source_format in KEPT_FORMATS
    )
    if unchanged:
        return data
    image = _finish(image, label, orientation, resize, plan)
    return encode_image(image, as_jpeg=source_format in JPEG_FAMILY)


def check_png_chunks(data: bytes) -> tuple[bytes, bool]:
    """Checks the CRC of every chunk of a PNG: returns the bytes to decode, and whether libpng takes them as
    they are.

    Pillow never checks the CRC of the pixel data (IDAT) nor of IEND, where libpng stops with an error; and it
    refuses a file whose ancillary chunk (text, EXIF, colour profile: the first letter of its type in lower
    case) has a wrong CRC, where libpng drops that chunk with a warning. So ancillary chunks with a wrong CRC
    are dropped here as libpng drops them, and a file with any wrong CRC, or cut inside a chunk, is not kept
    as it is: its pixels, if Pillow reads them all, are encoded anew.

    Example:
        >>> image = io.BytesIO(); Image.new("RGB", (1, 1)).save(image, "PNG")
        >>> check_png_chunks(image.getvalue())[1]
        True
    """
    view = memoryview(data)
    position = len(PNG_SIGNATURE)
    kept, intact = [view[:position]], True
    while position < len(data):
        # A chunk is its length, type, data and CRC: 12 bytes and the data.
        end = position + 12 + (struct.unpack_from(">I", data, position)[0] if position + 12 <= len(data) else 0)
        if end > len(data):  # cut inside a chunk
            intact = False
            kept.append(view[position:])
            break
        chunk_type = data[position + 4:position + 8]
        crc_is_right = zlib.crc32(view[position + 4:end - 4]) == struct.unpack_from(">I", data, end - 4)[0]
        intact = intact and crc_is_right
        if crc_is_right or not chunk_type[0] & 0x20:
            kept.append(view[position:end])
        position = end
        if chunk_type == b"IEND":
            break
    return (data, True) if intact else (b"".join(kept), False)


def prepare_pil_image(
    image: Image.Image, label: str, resize: Resize | None, max_pixels: int | None = None, as_jpeg: bool | None = None
) -> bytes:
    """Like `prepare_image` for an image that is already a PIL object; it is always encoded anew, as JPEG
    (quality 95) when `as_jpeg` says so or, with `as_jpeg` None, when the image was read from a JPEG; else PNG."""
    if max_pixels is not None and image.width * image.height > max_pixels:
        raise RowError(_too_many_pixels(label, image.width * image.height, max_pixels))
    with strict_decoding(label, max_pixels):
        image.load()
    as_jpeg = image.format in JPEG_FAMILY if as_jpeg is None else as_jpeg
    orientation = _orientation(image)
    plan = plan_resize(_upright_size(image.size, orientation), resize)
    image = _finish(image, label, orientation, resize, plan)
    return encode_image(image, as_jpeg=as_jpeg)


def _finish(
    image: Image.Image, label: str, orientation: int, resize: Resize | None, plan: ResizePlan | None
) -> Image.Image:
    try:
        if orientation != 1:
            image = ImageOps.exif_transpose(image)
        image = to_rgb(image)
    except MALFORMED_FILE_ERRORS as exc:
        raise RowError(f"cannot convert image {label} to RGB: {_reason(exc)}") from exc
    if plan is not None and resize is not None:
        image = apply_resize(image, plan, RESAMPLING[resize.algorithm])
    return image


def apply_resize(image: Image.Image, plan: ResizePlan, resample: int) -> Image.Image:
    """Scales an RGB image to `plan.content` and centres it on a `plan.canvas` of LETTERBOX_COLOR."""
    content = image.resize(plan.content, resample=resample)
    if plan.canvas == plan.content:
        return content
    canvas = Image.new("RGB", plan.canvas, LETTERBOX_COLOR)
    left = round((plan.canvas[0] - plan.content[0]) * 0.5)
    top = round((plan.canvas[1] - plan.content[1]) * 0.5)
    canvas.paste(content, (left, top))
    return canvas


def to_rgb(image: Image.Image) -> Image.Image:
    """Converts any Pillow mode to RGB without losing what the picture shows.

    Transparency is composited on white (not dropped, which would show whatever colour hid behind it), and
    16-bit and float images are scaled to 8 bits instead of being clipped to white.
    """
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode in HIGH_DEPTH_MODES:
        return Image.fromarray(_to_8bit(np.asarray(image), image.mode)).convert("RGB")
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _to_8bit(pixels: np.ndarray, mode: str) -> np.ndarray:
    """Maps high-depth grey values to 0..255.

    16-bit data (I;16*, and mode I when its values fit 16 bits, as older 16-bit PNG/TIFF decoders give) uses
    the full 16-bit range; floats in 0..1 or 0..255 keep their meaning; anything else is stretched from its
    own minimum and maximum, the only mapping that does not assume a range the data may not have.
    """
    values = pixels.astype(np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode.startswith("I;16") or (mode == "I" and low >= 0 and high <= 65535):
        scaled = values / 257.0
    elif mode == "F" and low >= 0 and high <= 1:
        scaled = values * 255.0
    elif mode == "F" and low >= 0 and high <= 255:
        scaled = values
    elif high > low:
        scaled = (values - low) * (255.0 / (high - low))
    else:
        scaled = np.zeros_like(values)
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def encode_image(image: Image.Image, as_jpeg: bool) -> bytes:
    """Encodes an RGB image; the same pixels always give the same bytes (no timestamps, no metadata)."""
    buffer = io.BytesIO()
    if as_jpeg:
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


@contextmanager
def strict_decoding(label: str, max_pixels: int | None = None) -> Iterator[None]:
    """Makes partial and oversized images errors for the duration of a decode, whatever another library set.

    Pillow checks the size of every image (and of every frame) from its header before decoding pixels; with
    `max_pixels` that check uses our limit, and anything over it is an error rather than a warning.

    Raises:
        RowError: for any decoding failure inside the block, naming the image by `label`.
    """
    saved_truncated, saved_max_pixels = ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    if max_pixels is not None:
        Image.MAX_IMAGE_PIXELS = max_pixels
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's message holds the pixel count; the limit it states may be twice ours (its hard-error line).
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        raise RowError(_too_many_pixels(label, int(pixels.group(1)) if pixels else None, limit)) from exc
    except UnidentifiedImageError as exc:
        raise RowError(f"cannot decode image {label}: not a recognised image format") from exc
    except MALFORMED_FILE_ERRORS as exc:
        raise RowError(f"cannot decode image {label}: {_reason(exc)}") from exc
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved_truncated
        Image.MAX_IMAGE_PIXELS = saved_max_pixels


def _too_many_pixels(label: str, pixels: int | None, limit: int | None) -> str:
    size = f"{pixels} pixels" if pixels is not None else "too many pixels"
    return f"image {label} is too large to decode safely: {size}, over the limit of {limit}"


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _orientation(image: Image.Image) -> int:
    try:
        orientation = int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except MALFORMED_FILE_ERRORS:
        # Unreadable EXIF says nothing reliable about orientation; the pixels themselves are still fine.
        return 1
    return orientation if 1 <= orientation <= 8 else 1


def _upright_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    return (size[1], size[0]) if orientation in ROTATING_ORIENTATIONS else size


def _draft_for(image: Image.Image, plan: ResizePlan, upright: tuple[int, int], orientation: int) -> None:
    """Lets the JPEG decoder skip detail the resize would throw away anyway, when shrinking by more than half."""
    wanted = (plan.content[0] * DRAFT_MARGIN, plan.content[1] * DRAFT_MARGIN)
    if wanted[0] > upright[0] or wanted[1] > upright[1]:
        return
    image.draft("RGB", _upright_size(wanted, orientation))
