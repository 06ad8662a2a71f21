"""How tokenize calls the processor: `ProcessorCall`, one way of calling `apply_chat_template`.

The plain call, `apply_chat_template(..., tokenize=True, return_assistant_tokens_mask=True, return_tensors="pt")`,
spends much of its time on work that changes nothing in what is stored (bench/notes.md has the figures):
- transformers finds the assistant tokens by walking the offset mapping one token at a time; as torch
  tensors, every step is a tensor operation. Asking for numpy arrays and converting them afterwards is quicker.
- asked for numpy or torch, the tokenizer first walks every nested list it returns in Python; asked for no
  tensors at all, it hands over its lists, which numpy converts in C.
- the image processor rescales and normalises its resized uint8 pixels into floats, which `PixelCodec` then
  turns back into uint8 codes; asking it not to rescale or normalise hands over the codes directly.
- handed a PIL image, the processor converts it to RGB, then to an array, then moves its channels first, three
  copies of every pixel; RGB images handed over as channels-first arrays skip all three (`channels_first` makes
  them from Pillow's own memory, on tokenize's decoding thread, off the processor's path).
- the processor's resize copies channels-first pixels into the layout torch's kernels resize, and back; where
  `vlmdata.resize_ahead` knows the resize, RGB images are resized on the decoding thread from Pillow's memory,
  and the processor is told not to resize them (`resize_ahead`).
- torch makes Qwen2-VL's patchify copy of uint8 pixels at half numpy's speed (`numpy_patches`).
- Qwen2-VL's image processor repeats every still image `temporal_patch_size` times inside each patch, and
  `PixelStorage` keeps one of the repeats; asked for a `temporal_patch_size` of 1, it hands over the patches
  `PixelStorage` stores, without writing the repeats first (`folded`).
- video pixels are asked for as uint8 codes the same way, through `videos_kwargs`, where the frames' metadata
  (carried by each video part, see `vlmdata.modalities.video.video_part`) goes as well.
- even on numpy arrays, the assistant mask is found by a Python loop over every token for every reply;
  `_assistant_masks` computes the same masks with one vectorised comparison per reply.

`vlmdata.calibration` takes each shortcut only if the probe rows come out the same through it.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import itertools
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from vlmdata.errors import RowError
from vlmdata.modalities.video import METADATA_KEY
from vlmdata.models.registry import DEFAULT_TEMPLATE_DATE
from vlmdata.patches import numpy_patches
from vlmdata.pillow_pixels import channels_first
from vlmdata.resize_ahead import ResizeAhead, resized_channels_first
from vlmdata.tensor_spec import VIDEO_PIXELS


@dataclass(frozen=True)
class ProcessorCall:
    """One way of calling `apply_chat_template`.

    Attributes:
        return_tensors: what the processor is asked for: "pt"; or "np", or None (the tokenizer's Python lists),
            converted to torch afterwards.
        pixel_codes: the outputs asked for as the resized uint8 pixels, neither rescaled nor normalised: they
            are the stored codes.
        vectorised_masks: the assistant masks come from `_assistant_masks` rather than transformers' loop.
        image_arrays: RGB images are handed over as `[3, height, width]` uint8 arrays (see `prepare`).
        folded: the outputs asked for with one frame per patch (still images, `temporal_patch_size` 1): they
            come as `PixelStorage` stores them, folded.
        resize_ahead: with `image_arrays`, the settings RGB images are resized ahead with (see `prepare`).
        numpy_patches: the image processor's patchify made by numpy (`vlmdata.patches`).
    """

    return_tensors: str | None = "pt"
    pixel_codes: tuple[str, ...] = ()
    vectorised_masks: bool = False
    image_arrays: bool = False
    folded: tuple[str, ...] = ()
    resize_ahead: ResizeAhead | None = None
    numpy_patches: bool = False

    def prepare(self, messages: list[dict], processor) -> list[dict]:
        """The messages as this call hands them to the processor: with `image_arrays`, each RGB image as an
        array (other modes keep their PIL image, whose conversion to RGB is the processor's). With
        `resize_ahead`, and when every image of the row is RGB, each is resized as a `[3, height, width]`
        tensor; a row with any other image leaves all its images to the processor's resize. Prepared messages
        are returned as they are."""
        if not self.image_arrays:
            return messages
        images = _images(messages)
        if self.resize_ahead is not None and images and all(_rgb(image) for image in images):
            try:
                return _converted(messages, functools.partial(resized_channels_first, processor.image_processor,
                                                              self.resize_ahead))
            except Exception:  # an image the resize refuses (too narrow...): the processor's own call says why
                pass
        return _converted(messages, channels_first)

    def apply(self, processor, messages: list[dict], template: str, date: str = DEFAULT_TEMPLATE_DATE) -> dict[str, torch.Tensor]:
        """The processor's outputs for one conversation, as torch tensors with a batch dimension of one.

        `date` is what templates that write today's date write (as `date_string`).

        Raises:
            RowError: the processor or the template failed on this conversation.
        """
        messages, video_metadata = _video_metadata(self.prepare(messages, processor))
        resized = self.resize_ahead is not None and _resized_ahead(messages)
        if self.vectorised_masks:  # on this processor object only, for this call only
            processor._adjust_assistant_masks_indices = functools.partial(_assistant_masks, processor)
        patches = numpy_patches(processor.image_processor) if self.numpy_patches else contextlib.nullcontext()
        try:
            with patches:
                outputs = processor.apply_chat_template(
                    messages,
                    chat_template=template,
                    tokenize=True,
                    return_dict=True,
                    return_assistant_tokens_mask=True,
                    return_tensors=self.return_tensors,
                    processor_kwargs=self._processor_kwargs(processor, video_metadata, resized),
                    # Only to a template that reads it: transformers hands any other keyword to the processor.
                    **({"date_string": date} if "date_string" in template else {}),
                )
            if self.return_tensors != "pt":
                _to_torch(outputs)
        except Exception as error:  # a template exception, a bad image size...: the row's fault, not the run's
            message = str(error).splitlines()[0] if str(error) else ""
            raise RowError(f"the processor failed: {type(error).__name__}: {message}") from None
        finally:
            if self.vectorised_masks:
                del processor._adjust_assistant_masks_indices
        for name in self.pixel_codes:
            if name in outputs and outputs[name].dtype != torch.uint8:  # never store unnormalised floats as if normalised
                raise RowError(f"the processor returned {name} as {outputs[name].dtype}, not as unnormalised uint8 pixels")
        return outputs

    def _processor_kwargs(self, processor, video_metadata: list, resized_ahead: bool) -> dict:
        # A new dict on every call: transformers adds its own keys to the one it is given.
        kwargs = {}
        images = {"do_rescale": False, "do_normalize": False} if set(self.pixel_codes) - {VIDEO_PIXELS} else {}
        if self.image_arrays:  # never guessed from the shape: a 3-pixel-wide image would look channels-last
            images["input_data_format"] = "channels_first"
        if resized_ahead:
            images["do_resize"] = False
        if self.folded:
            images["temporal_patch_size"] = 1
        if images:
            kwargs["images_kwargs"] = images
        if video_metadata:
            # The frames were sampled once, in convert: the processor takes them as they are, at their times.
            videos = {"do_sample_frames": False, "video_metadata": video_metadata}
            if VIDEO_PIXELS in self.pixel_codes:
                videos.update(do_rescale=False, do_normalize=False)
            if hasattr(getattr(processor, "video_processor", None), "cap_pixels_per_frame"):
                # The processor's behaviour when not told, said explicitly: it warns on every call otherwise.
                videos["cap_pixels_per_frame"] = False
            kwargs["videos_kwargs"] = videos
        return kwargs


PLAIN_CALL = ProcessorCall()


def _video_metadata(messages: list[dict]) -> tuple[list[dict], list]:
    """The messages without the metadata their video parts carry, and that metadata in the videos' order."""
    metadata = []
    if not any(part.get(METADATA_KEY) is not None for message in messages for part in message["content"]):
        return messages, metadata
    stripped = []
    for message in messages:
        content = []
        for part in message["content"]:
            if METADATA_KEY in part:
                metadata.append(part[METADATA_KEY])
                part = {key: value for key, value in part.items() if key != METADATA_KEY}
            content.append(part)
        stripped.append({**message, "content": content})
    return stripped, metadata


def _to_torch(outputs) -> None:
    """`outputs.convert_to_tensors("pt")`, in place, with lists of integers converted by numpy, much quicker than
    `torch.tensor`, which reads a Python list one element at a time."""
    for name, value in outputs.items():
        if isinstance(value, list) and value and isinstance(value[0], list):
            try:
                array = np.asarray(value)
            except ValueError:  # rows of different lengths: left to transformers, which says so
                continue
            if array.dtype.kind in "iu":
                outputs[name] = torch.from_numpy(array.astype(np.int64, copy=False))  # what torch.tensor makes of ints
    outputs.convert_to_tensors("pt")


def _rgb(image) -> bool:
    return isinstance(image, Image.Image) and image.mode == "RGB"


def _converted(messages: list[dict], convert) -> list[dict]:
    """The messages with `convert` applied to each RGB image."""
    def part_converted(part: dict) -> dict:
        image = part.get("image") if part.get("type") == "image" else None
        return {**part, "image": convert(image)} if _rgb(image) else part

    return [{**message, "content": [part_converted(part) for part in message["content"]]} for message in messages]


def _resized_ahead(messages: list[dict]) -> bool:
    """Whether `prepare` resized the row's images: then each is a tensor (an image not resized is an array or
    a PIL image)."""
    images = _images(messages)
    return bool(images) and all(isinstance(image, torch.Tensor) for image in images)


def _images(messages: list[dict]) -> list:
    return [part.get("image") for message in messages for part in message["content"] if part.get("type") == "image"]


def _assistant_masks(processor, processed: dict, generation_indices: list[list[tuple[int, int]]]) -> dict:
    """What transformers' `_adjust_assistant_masks_indices` returns, computed with numpy.

    A token is in the mask when its characters overlap a reply's span, the span shifted past the characters
    that expanded media placeholders before it gained.
    """
    offsets = processed.pop("offset_mapping")
    replacements = processed.pop("text_replacement_offsets", None)
    if replacements is None or len(replacements) == 0:
        replacements = [[]] * len(processed["input_ids"])
    masks = []
    for row_offsets, row_replacements, spans in zip(offsets, replacements, generation_indices):
        # Read flattened: numpy reads a list of pairs more slowly.
        token_spans = np.fromiter(itertools.chain.from_iterable(row_offsets), np.int64, 2 * len(row_offsets)).reshape(-1, 2)
        placeholder_ends = [replacement["span"][1] for replacement in row_replacements]
        gained = [0] + [replacement["new_span"][1] - replacement["span"][1] for replacement in row_replacements]
        mask = np.zeros(len(token_spans), dtype=bool)
        for span in spans:
            start, end = (char + gained[bisect.bisect_right(placeholder_ends, char)] for char in span)
            mask |= (token_spans[:, 0] < end) & (token_spans[:, 1] > start)
        masks.append(mask.astype(np.int64))
    processed["assistant_masks"] = np.stack(masks) if masks else np.zeros((0, 0), np.int64)
    return processed
