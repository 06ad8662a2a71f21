"""Images: stored encoded as `datasets.Image` stores them, decoded for the processor as `datasets.Image` does."""

from __future__ import annotations

import re
from typing import Any

import datasets
from PIL import Image

from vlmdata.errors import RowError
from vlmdata.media import MediaLoader
from vlmdata.modalities.base import Modality

# Some of Pillow's messages name the in-memory file by its address, which differs from run to run.
OBJECT_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


class ImageModality(Modality):
    kind = "image"
    column = "images"
    source_columns = ("images", "image")
    feature = datasets.Image()
    # A part such as {"path": "cat.jpg"} with no type has always meant an image.
    takes_bare_addresses = True
    item = "image"
    label = "images"
    pictures = True

    @property
    def undecoded_feature(self) -> datasets.Image:
        return datasets.Image(decode=False)

    def load(self, payload: dict[str, Any], base_dir: str | None, loader: MediaLoader) -> dict[str, Any]:
        return loader.load_image(payload, base_dir)

    def processor_part(self, stored: dict[str, Any], position: int, processor) -> dict[str, Any]:
        return {"type": "image", "image": decode_stored(stored, f"image {position}")}


def decode_stored(stored: dict[str, Any], what: str) -> Image.Image:
    """A stored picture ({bytes, path}) decoded as `datasets.Image` decodes it, so that the pixels equal what
    users of the dataset see.

    Raises:
        RowError: it cannot be decoded; the reason starts with `what` ("image 2", "video 0 frame 3").
    """
    try:
        return datasets.Image().decode_example({"bytes": stored["bytes"], "path": stored["path"]})
    except Image.UnidentifiedImageError:
        raise RowError(f"{what}: cannot decode: not a recognised image format") from None
    except Exception as error:
        raise RowError(f"{what}: cannot decode: {OBJECT_ADDRESS.sub('', str(error))}") from None


IMAGE = ImageModality()
