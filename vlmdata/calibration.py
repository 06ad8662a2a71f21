"""Calibrating tokenize for one processor: how to store each tensor, and the quickest call that stores the same.

Before the first row, tokenize runs two made-up conversations (differently sized images, one then two of them,
and audio and videos where the family takes them) through the processor's plain call. Their outputs show which
tensors the processor returns and how their dimensions vary (`vlmdata.shards.probe_layout`), and they are what
every quicker `ProcessorCall` must reproduce, bit for bit, to be chosen. The result is a `TokenizePlan`, the
same in every worker.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from vlmdata.errors import FatalError, RowError
from vlmdata.modalities.video import video_part
from vlmdata.models.loading import LoadedProcessor
from vlmdata.patches import patchifies_like_qwen2_vl
from vlmdata.pixels import PixelStorage
from vlmdata.processor_call import PLAIN_CALL, ProcessorCall
from vlmdata.resize_ahead import resize_ahead_settings
from vlmdata.shards import TensorLayout, probe_layout
from vlmdata.tensor_spec import VIDEO_PIXELS


@dataclass(frozen=True)
class TokenizePlan:
    """How every row of a run is tokenized and stored.

    Attributes:
        layout: how each processor output is stored in the shards.
        call: the quickest call whose outputs equal the plain call's on the probe rows.
    """

    layout: TensorLayout
    call: ProcessorCall


def calibrate(loaded: LoadedProcessor, template: str) -> TokenizePlan:
    """The plan for `loaded`'s processor with `template`.

    Raises:
        FatalError: the processor cannot tokenize a simple image conversation.
    """
    conversations = probe_conversations(loaded)
    plain = _probe_outputs(loaded, template, conversations)
    processor = loaded.processor
    layout = probe_layout(plain, getattr(processor, "image_processor", None), getattr(processor, "video_processor", None))
    pixels = {spec.name: spec.pixels for spec in layout.tensors if spec.pixels is not None}
    return TokenizePlan(layout, quickest_call(loaded.processor, template, conversations, plain, pixels))


def probe_conversations(loaded: LoadedProcessor) -> list[list[dict]]:
    """Two made-up conversations with differently sized images (and audio, and videos), to find the layout.

    Where the family takes videos, the first holds one video and the second two, of odd frame counts whose
    frames all differ, so that video pixels are found to be stored frame by frame. The second row's two videos
    differ in length too, unless the family's processor stacks a row's videos into one tensor.
    """
    def drawn(width: int, height: int) -> Image.Image:
        # Stripes through every level in each channel: the checks on pixels see all 256 values.
        levels = np.add.outer(np.arange(height) * 3, np.arange(width) * 5) % 256
        return Image.fromarray(np.stack([levels, levels[::-1], 255 - levels], axis=-1).astype(np.uint8))

    def moving(frames: int, width: int, height: int) -> dict:
        # The stripes shifted by a few levels each frame: no two frames are the same.
        base = np.asarray(drawn(width, height), dtype=np.int64)
        video = np.stack([(base + 7 * frame) % 256 for frame in range(frames)]).astype(np.uint8)
        return video_part(video, [frame / 2.0 for frame in range(frames)], 2.0, frames)

    def row(images: list[Image.Image], audio_seconds: float | None, videos: list[dict]) -> list[dict]:
        content = [{"type": "image", "image": image} for image in images] + videos
        if audio_seconds is not None:
            content.append({"type": "audio", "audio": np.zeros(int(16000 * audio_seconds), dtype=np.float32)})
        content.append({"type": "text", "text": "What is this?"})
        reply = [{"type": "text", "text": "A picture."}]
        return [{"role": "user", "content": content}, {"role": "assistant", "content": reply}]

    with_audio = "audio" in loaded.family.modalities
    with_video = "video" in loaded.family.modalities
    return [
        row([drawn(64, 48)], 0.5 if with_audio else None, [moving(3, 56, 42)] if with_video else []),
        row([drawn(140, 50), drawn(30, 90)], 1.0 if with_audio else None,
            [moving(5, 84, 56), moving(5 if loaded.family.stacks_videos else 3, 42, 70)] if with_video else []),
    ]


def _probe_outputs(loaded: LoadedProcessor, template: str, conversations: list[list[dict]]) -> list[dict]:
    try:
        return [PLAIN_CALL.apply(loaded.processor, messages, template) for messages in conversations]
    except RowError as error:
        raise FatalError(f"The processor of {loaded.name!r} cannot tokenize a simple image conversation: {error}") from None


def quickest_call(
    processor, template: str, conversations: list[list[dict]], plain: list[dict], pixels: dict[str, PixelStorage]
) -> ProcessorCall:
    """The quickest call that reproduces `plain` (the plain call's outputs for `conversations`).

    Args:
        pixels: how each output stored as codes is stored, by name; without one, pixels stay floats.
    """
    # Quickest first: pixels as codes (folded before not) before floats, then vectorised masks before
    # transformers' loop, then lists before numpy arrays, then images as arrays before PIL images.
    stored_codes = tuple(pixels)
    if stored_codes and _videos_among_other_pixels(conversations, plain):
        # InternVL puts video frames among the image tiles of pixel_values: the frames must come as codes too.
        stored_codes += (VIDEO_PIXELS,)
    folded = tuple(name for name, storage in pixels.items() if storage.folded)
    pixel_choices = ([(stored_codes, folded)] if folded else []) + ([(stored_codes, ())] if pixels else []) + [((), ())]
    # Images as arrays, resized ahead and patchified by numpy where this processor's resize and patchify are
    # known, before as arrays alone, before as PIL images.
    resize = resize_ahead_settings(processor)
    by_numpy = patchifies_like_qwen2_vl(getattr(processor, "image_processor", None))
    image_choices = [(True, resize, by_numpy)] if resize is not None or by_numpy else []
    image_choices += [(True, None, False), (False, None, False)]
    candidates = [ProcessorCall(tensors, codes, masks, arrays, folds, ahead, patches) for codes, folds in pixel_choices
                  for masks in (True, False) for tensors in (None, "np") for arrays, ahead, patches in image_choices]
    # A processor that works on its outputs as torch tensors (InternVL slices and joins its pixels) takes only "pt".
    candidates += [ProcessorCall("pt", codes, True, arrays, folds, ahead, patches) for codes, folds in pixel_choices
                   for arrays, ahead, patches in image_choices]
    if pixels:
        candidates.append(ProcessorCall("pt", stored_codes))
    for call in candidates:
        if _reproduces(call, processor, template, conversations, plain, pixels):
            return call
    return PLAIN_CALL


def _videos_among_other_pixels(conversations: list[list[dict]], plain: list[dict]) -> bool:
    """Whether the probe rows hold videos, but the processor returns no pixels of their own for them."""
    has_videos = any(part.get("type") == "video" for messages in conversations for message in messages
                     for part in message["content"])
    return has_videos and not any(VIDEO_PIXELS in outputs for outputs in plain)


def _reproduces(call: ProcessorCall, processor, template, conversations, plain, pixels) -> bool:
    for messages, expected in zip(conversations, plain):
        try:
            outputs = call.apply(processor, messages, template)
        except RowError:
            return False
        if set(outputs) != set(expected):
            return False
        for name, tensor in expected.items():
            got = outputs[name]
            if name in call.pixel_codes:
                if got.dtype != torch.uint8 or not _bit_equal(_decoded(got, pixels[name], name in call.folded),
                                                              tensor.float().numpy()):
                    return False
            elif not _same(got, tensor):
                return False
    return True


def _decoded(codes: torch.Tensor, storage: PixelStorage, folded: bool) -> np.ndarray:
    """The floats that `codes` stand for, as the processor returns them: folded codes as the shards rebuild them."""
    return storage.decode_tensor(codes).float().numpy() if folded else storage.codec.decode(codes.numpy())


def _same(got, expected) -> bool:
    if not torch.is_tensor(expected):
        return got == expected
    return torch.is_tensor(got) and got.dtype == expected.dtype and got.shape == expected.shape and torch.equal(got, expected)


def _bit_equal(a: np.ndarray, b: np.ndarray) -> bool:
    # Bit for bit, unlike ==, which takes -0.0 for 0.0.
    return a.shape == b.shape and np.array_equal(a.astype(np.float32).view(np.uint32), b.astype(np.float32).view(np.uint32))
