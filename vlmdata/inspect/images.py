"""Image sizes read from file headers, and small thumbnails embedded in the page as data URIs."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from PIL import Image

THUMBNAIL_SIDE = 192


@dataclass(frozen=True)
class Thumbnail:
    """An image as the page shows it.

    Attributes:
        uri: a `data:` URI of the thumbnail, or None when the image cannot be read.
        width, height: the size of the original image (0 when unreadable).
    """

    uri: str | None
    width: int = 0
    height: int = 0


def header_sizes(images: pa.Array) -> list[tuple[int, int] | None]:
    """The (width, height) of each image of an Arrow list<{bytes, path}> column, None for an unreadable one.

    `Image.open` parses the header only; the pixels are never decoded, and the bytes are read from the memory
    map in place.
    """
    flat = images.flatten()
    data, paths = flat.field("bytes"), flat.field("path")
    sizes = []
    for position in range(len(flat)):
        buffer = data[position].as_buffer()
        source = pa.BufferReader(buffer) if buffer is not None else paths[position].as_py()
        sizes.append(_size(source))
    return sizes


def _size(source: Any) -> tuple[int, int] | None:
    if source is None:
        return None
    try:
        with Image.open(source) as image:
            return image.size
    except Exception:  # a truncated or foreign file: counted as unreadable, never a crash
        return None


def thumbnail(image: dict[str, Any] | None, side: int = THUMBNAIL_SIDE) -> Thumbnail:
    """A thumbnail, at most `side` wide and high, of an image stored as `datasets.Image` stores it ({bytes, path})."""
    source = None
    if image and image.get("bytes") is not None:
        source = io.BytesIO(image["bytes"])
    elif image and image.get("path"):
        source = image["path"]
    if source is None:
        return Thumbnail(None)
    try:
        with Image.open(source) as opened:
            size = opened.size
            opened.draft("RGB", (side, side))  # a JPEG then decodes at a reduced scale
            opened.thumbnail((side, side))
            return Thumbnail(_data_uri(opened), *size)
    except Exception:  # an unreadable image is shown as such on its card
        return Thumbnail(None)


def _data_uri(image: Image.Image) -> str:
    # PNG keeps transparency and palettes exact; photographs are far smaller as JPEG.
    if image.mode in ("RGBA", "LA", "P", "1", "L"):
        kind, options = "png", {"optimize": True}
    else:
        kind, options = "jpeg", {"quality": 85}
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, kind.upper(), **options)
    return f"data:image/{kind};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"
