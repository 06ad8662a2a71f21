"""An RGB image's pixels read from Pillow's own memory, in the layouts the processor call hands over.

Pillow keeps an RGB pixel in 4 bytes (RGBX) and, from Pillow 11.2, exports that memory without a copy through
the Arrow C interface; `np.asarray` would first copy every pixel into a bytes object. Pillow before 11.2 exports
nothing, nor an image larger than its allocator's block: those images take the ordinary copy.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
from PIL import Image


def channels_first(image: Image.Image) -> np.ndarray:
    """An RGB image's pixels as a contiguous, writable `[3, height, width]` uint8 array: contiguous, so that the
    processor copies nothing; writable, since torch warns about read-only arrays."""
    exported = _exported_rgbx(image)
    if exported is not None:
        pixels = exported.to_numpy(zero_copy_only=True).reshape(image.height, image.width, 4)
        return pixels[:, :, :3].transpose(2, 0, 1).copy()
    return np.asarray(image).transpose(2, 0, 1).copy()


def channels_last(image: Image.Image) -> torch.Tensor:
    """An RGB image's pixels as a `[1, channels, height, width]` uint8 tensor laid out channels last: Pillow's
    own memory, 4 channels (RGB and a padding byte), where it can be exported; otherwise a copy, 3 channels.
    Only to be read: it may be the image's memory."""
    exported = _exported_rgbx(image)
    if exported is not None:
        # DLPack rather than numpy: torch warns about arrays it cannot write to, and this one is only read.
        pixels = torch.from_dlpack(exported).view(1, image.height, image.width, 4)
    else:
        pixels = torch.from_numpy(np.array(image)).unsqueeze(0)
    return pixels.permute(0, 3, 1, 2)


def _exported_rgbx(image: Image.Image) -> pa.Array | None:
    """The image's RGBX bytes, flat, exported from Pillow's memory; None where Pillow exports nothing."""
    if not hasattr(image, "__arrow_c_array__"):
        return None
    try:
        exported = pa.array(image)
    except ValueError:  # an image in several of Pillow's blocks
        return None
    kind = exported.type
    if pa.types.is_fixed_size_list(kind) and kind.list_size == 4 and kind.value_type == pa.uint8():
        return exported.values
    return None
