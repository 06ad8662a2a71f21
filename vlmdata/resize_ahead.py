"""Resizing still images ahead of the processor, with the image processor's own resize, from Pillow's memory.

The Qwen and Gemma 3 image processors resize uint8 pixels with torch's antialiased kernels, which work on pixels
laid out channels last, as Pillow keeps an RGB image. The processor's own path first moves every image channels
first, so the kernel copies it back into its layout and copies its result out again. Resized here, straight from
Pillow's memory, neither copy is made: the result is moved channels first once, and the processor, told not to
resize, takes it as it is.

Only image processors whose resize is known to come first, and from the image alone, are resized ahead
(`resize_ahead_settings`); `vlmdata.calibration` takes it only where the probe rows come out the same, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from vlmdata.pillow_pixels import channels_last


@dataclass(frozen=True)
class ResizeAhead:
    """The image processor's resize settings, as its preprocessing receives them.

    Attributes:
        size: the processor's target size, its `SizeDict` as (key, value) pairs.
        resample: the processor's resampling filter (a `PILImageResampling` value).
        factor: for the Qwen image processors, what both sides of a resized image are a multiple of.
    """

    size: tuple[tuple[str, int], ...]
    resample: int
    factor: int | None = None


def resize_ahead_settings(processor) -> ResizeAhead | None:
    """The settings to resize ahead with for this processor, or None where its resizing is not known here."""
    image_processor = getattr(processor, "image_processor", None)
    kind = _known_resize(image_processor)
    if kind is None:
        return None
    try:
        settings = _preprocess_settings(processor, image_processor)
    except Exception:  # another transformers that resolves its settings otherwise: no resizing ahead
        return None
    if not settings.get("do_resize") or settings.get("size") is None or settings.get("resample") is None:
        return None
    if kind == "gemma3" and settings.get("do_pan_and_scan"):  # crops are cut from the image before resizing
        return None
    size = tuple((key, value) for key, value in vars(settings["size"]).items() if value is not None)
    factor = settings["patch_size"] * settings["merge_size"] if kind == "qwen2_vl" else None
    return ResizeAhead(size, int(settings["resample"]), factor)


def resized_channels_first(image_processor, settings: ResizeAhead, image: Image.Image) -> torch.Tensor:
    """An RGB image resized as `image_processor` resizes it, as a contiguous `[3, height, width]` uint8 tensor."""
    from transformers.image_utils import SizeDict

    extra = {"factor": settings.factor} if settings.factor is not None else {}
    resized = image_processor.resize(channels_last(image), SizeDict(**dict(settings.size)), settings.resample, **extra)
    # Moved channels first by numpy: torch copies a uint8 tensor with a stride of 4 bytes a byte at a time.
    return torch.from_numpy(np.ascontiguousarray(resized[0, :3].numpy()))


def _known_resize(image_processor) -> str | None:
    """Which known preprocessing `image_processor` runs: its class's own, not a subclass's changes to it."""
    kind = type(image_processor)
    try:
        from transformers.image_processing_backends import TorchvisionBackend
        from transformers.models.gemma3.image_processing_gemma3 import Gemma3ImageProcessor
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    except ImportError:
        return None
    if kind._preprocess is Qwen2VLImageProcessor._preprocess and kind.resize is Qwen2VLImageProcessor.resize:
        return "qwen2_vl"
    if kind._preprocess is Gemma3ImageProcessor._preprocess and kind.resize is TorchvisionBackend.resize:
        return "gemma3"
    return None


def _preprocess_settings(processor, image_processor) -> dict:
    """What the image processor's preprocessing receives from a processor call that sets no image keywords: the
    processor's merged keywords, the image processor's own attributes under them, then standardised."""
    tokenizer = getattr(processor, "tokenizer", None)
    merged = processor._merge_kwargs(tokenizer_init_kwargs=tokenizer.init_kwargs if tokenizer is not None else {})
    settings = dict(merged["images_kwargs"])
    for name in image_processor._valid_kwargs_names:
        settings.setdefault(name, getattr(image_processor, name, None))
    return image_processor._standardize_kwargs(**settings)
