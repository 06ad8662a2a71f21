"""Batches of model inputs from token shard rows: padding and stacking only, never an image processor.

Each row is rebuilt by `vlmdata.shards.model_inputs` (which replays the stored pixel codes into the
processor's exact floats) and the rows are merged the way the processor itself batches:
- per-row tensors (`input_ids`, `labels`, `attention_mask`, per-token type ids and masks, Mllama's
  `[1, images, tiles, ...]` pixels and aspect ratios) are padded to the longest row and stacked; a row without
  one (a text-only row in a batch with images) contributes zeros;
- per-token tensors other than the ids, labels and attention mask (type ids, Mllama's cross-attention mask)
  repeat their last token's values over the padding, as Mllama's processor extends each image's mask to the
  end of the padded row;
- per-image or per-clip tensors (`[images, 3, H, W]` pixels, Qwen2-VL's patches and grids, Pixtral's image
  sizes, audio features) are concatenated along their first axis, padded with zeros where image sizes differ
  (Pixtral's model crops each image back with `image_sizes`).
Padding is on the right: `input_ids` get the pad token, `labels` get -100, everything else 0, except that a
padded Mllama image keeps its first tile in `aspect_ratio_mask` (every real image has one), as its processor
does, so that no image is masked out entirely.

With `decode_pixels=False`, pixels stored as uint8 codes stay codes in the batch (a quarter of the bytes to
build, pin and copy, an eighth for Qwen2-VL's folded frames) and `PixelDecoding`, a forward pre-hook on the
model, turns them into the processor's floats on the model's device: the model sees the same values, bit for
bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import torch

from vlmdata.labels import IGNORE_INDEX
from vlmdata.shards import TensorLayout, TensorSpec, arrow_row, decode_codes, model_inputs

ALWAYS_BATCHED = ("input_ids", "attention_mask", "labels")


@dataclass
class ShardCollator:
    """Turns a list of shard rows into one batch of model inputs.

    Example:
        >>> collate = ShardCollator(read_layout("out/shards"), pad_token_id=0)  # doctest: +SKIP
        >>> batch = collate([shards[0], shards[1]])  # doctest: +SKIP
        >>> batch["input_ids"].shape  # doctest: +SKIP
        torch.Size([2, 57])

    Attributes:
        layout: the shards' tensor layout (`vlmdata.shards.read_layout`).
        pad_token_id: the tokenizer's pad token.
        float_dtype: floating point inputs are cast to it (the model's dtype), if given.
        seen_ids: when a list, the `id` of every row collated is appended to it (which rows a process trained on).
    """

    layout: TensorLayout
    pad_token_id: int
    float_dtype: torch.dtype | None = None
    seen_ids: list[str] | None = field(default=None, repr=False)
    decode_pixels: bool = True

    def __call__(self, rows: list[dict[str, Any] | pa.Table]) -> dict[str, torch.Tensor]:
        rows = [arrow_row(row) if isinstance(row, pa.Table) else row for row in rows]
        if self.seen_ids is not None:
            self.seen_ids.extend(str(row.get("id", "")) for row in rows)
        inputs = [model_inputs(row, self.layout, self.decode_pixels) for row in rows]
        batched = set(ALWAYS_BATCHED) | {spec.name for spec in self.layout.tensors if spec.batched}
        per_token = {spec.name for spec in self.layout.tensors if spec.per_token}
        codecs = {spec.name: spec for spec in self.layout.tensors if spec.codec is not None}
        names = [name for name in (*ALWAYS_BATCHED, *(spec.name for spec in self.layout.tensors)) if any(name in i for i in inputs)]
        batch = {}
        for name in names:
            tensors = [row.get(name) for row in inputs]
            if name in codecs:
                tensors = _codes_or_floats(tensors, codecs[name], name in batched)
            pad = self.pad_token_id if name == "input_ids" else IGNORE_INDEX if name == "labels" else 0
            if name in batched:
                batch[name] = stack_padded(tensors, pad, repeat_last=name in per_token)
            else:
                batch[name] = concat_padded([tensor for tensor in tensors if tensor is not None])
            if name == "aspect_ratio_mask":
                batch[name][..., 0] = 1
            if self.float_dtype is not None and batch[name].is_floating_point():
                batch[name] = batch[name].to(self.float_dtype)
        return batch


def _codes_or_floats(tensors: list[torch.Tensor | None], spec: TensorSpec, batched: bool) -> list[torch.Tensor | None]:
    """The rows' pixels, left as codes only if batching them adds no padding and every row has codes.

    A padding 0 among codes would decode to the value of code 0, not to the processor's 0.0, and codes cannot
    be concatenated with floats: in those cases every row's codes are decoded here.
    """
    present = [tensor for tensor in tensors if tensor is not None]
    codes = [tensor.dtype == torch.uint8 for tensor in present]
    same_shape = len({tuple(tensor.shape[1:]) for tensor in present}) == 1
    if not any(codes) or (all(codes) and same_shape and not batched):
        return tensors
    return [decode_codes(tensor, spec) if tensor is not None and tensor.dtype == torch.uint8 else tensor for tensor in tensors]


class PixelDecoding:
    """A forward pre-hook that turns pixel codes in the model's inputs into the processor's floats, on the
    device the inputs are on, in `dtype` (by default the processor's own dtype, as `model_inputs` rebuilds it).

    Example:
        >>> model.register_forward_pre_hook(PixelDecoding(layout, torch.bfloat16), with_kwargs=True)  # doctest: +SKIP
    """

    def __init__(self, layout: TensorLayout, dtype: torch.dtype | None = None):
        self.specs = [spec for spec in layout.tensors if spec.codec is not None]
        self.dtype = dtype

    def __call__(self, module, args, kwargs):
        for spec in self.specs:
            codes = kwargs.get(spec.name)
            if codes is not None and codes.dtype == torch.uint8:
                values = decode_codes(codes, spec)
                kwargs[spec.name] = values if self.dtype is None else values.to(self.dtype)
        return args, kwargs


def stack_padded(tensors: list[torch.Tensor | None], pad: int | float, repeat_last: bool = False) -> torch.Tensor:
    """Per-row tensors `[1, ...]` padded at the end of every dimension and stacked along the first.

    A missing tensor (None) becomes all `pad`, shaped like the others. With `repeat_last`, the padding along
    dimension 1 (the tokens) repeats the row's last token instead.
    """
    present = [tensor for tensor in tensors if tensor is not None]
    shape = [max(tensor.shape[dim] for tensor in present) for dim in range(1, present[0].ndim)]
    out = torch.full((len(tensors), *shape), pad, dtype=present[0].dtype)
    for index, tensor in enumerate(tensors):
        if tensor is None:
            continue
        out[(index, *(slice(0, size) for size in tensor.shape[1:]))] = tensor[0]
        if repeat_last and 0 < tensor.shape[1] < shape[0]:
            out[(index, slice(tensor.shape[1], None), *(slice(0, size) for size in tensor.shape[2:]))] = tensor[0, -1:]
    return out


def concat_padded(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Per-image tensors concatenated along the first dimension, zero-padded where later dimensions differ."""
    shape = [max(tensor.shape[dim] for tensor in tensors) for dim in range(1, tensors[0].ndim)]
    if all(list(tensor.shape[1:]) == shape for tensor in tensors):
        return torch.cat(tensors)
    out = torch.zeros((sum(tensor.shape[0] for tensor in tensors), *shape), dtype=tensors[0].dtype)
    start = 0
    for tensor in tensors:
        out[(slice(start, start + tensor.shape[0]), *(slice(0, size) for size in tensor.shape[1:]))] = tensor
        start += tensor.shape[0]
    return out
