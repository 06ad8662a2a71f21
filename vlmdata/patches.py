"""Qwen2-VL's patchify, the same copy made by numpy.

The Qwen image processors cut every resized image into patches with one strided copy (`patchify`: a reshape,
a permute of eight dimensions, a reshape). Torch makes that copy of uint8 pixels about half as fast as numpy
makes the same one (bench/notes.md), and it is on the processor's path. For the length of one call,
`numpy_patchify` stands in for the image processor's method; the patches are the same bytes, and
`vlmdata.calibration` takes it only where the probe rows come out the same.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import numpy as np
import torch


def patchifies_like_qwen2_vl(image_processor) -> bool:
    """Whether `image_processor` patchifies with Qwen2-VL's own method, which `numpy_patchify` repeats."""
    try:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    except ImportError:
        return False
    return getattr(type(image_processor), "patchify", None) is Qwen2VLImageProcessor.patchify


@contextlib.contextmanager
def numpy_patches(image_processor) -> Iterator[None]:
    """`numpy_patchify` as `image_processor`'s patchify, on this object only, while the block runs."""
    own_patchify = type(image_processor).patchify.__get__(image_processor)
    image_processor.patchify = functools.partial(numpy_patchify, own_patchify)
    try:
        yield
    finally:
        del image_processor.patchify


def numpy_patchify(
    own_patchify, images: torch.Tensor, patch_size: int, merge_size: int, temporal_patch_size: int
) -> tuple[torch.Tensor, int, int]:
    """What Qwen2-VL's `patchify` returns for `[batch, channel, height, width]` images, the copy made by numpy;
    `own_patchify` (the image processor's method) for a tensor numpy cannot hold, such as bfloat16."""
    if images.device.type != "cpu" or images.requires_grad or images.dtype == torch.bfloat16:
        return own_patchify(images, patch_size, merge_size, temporal_patch_size)
    batch, channel, height, width = images.shape
    grid_h, grid_w = height // patch_size, width // patch_size
    patches = images.numpy().reshape(
        batch, channel, grid_h // merge_size, merge_size, patch_size, grid_w // merge_size, merge_size, patch_size
    )
    # [batch, grid_h/merge, grid_w/merge, merge, merge, channel, temporal, patch, patch], as Qwen2-VL orders it.
    patches = patches.transpose(0, 2, 5, 3, 6, 1, 4, 7)[:, :, :, :, :, :, None]
    patches = np.broadcast_to(patches, patches.shape[:6] + (temporal_patch_size,) + patches.shape[7:])
    flat = np.ascontiguousarray(patches).reshape(batch, grid_h * grid_w, channel * temporal_patch_size * patch_size**2)
    return torch.from_numpy(flat), grid_h, grid_w
