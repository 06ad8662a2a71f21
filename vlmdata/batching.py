"""How each model input is merged across rows: the rule a tensor's spec declares, for batches and packed rows.

Every model input has one of three layouts, and its rule merges rows the way the processor itself would:
- per token (`[1, L, ...]`: `input_ids`, `labels`, `attention_mask`, type ids, Mllama's cross-attention mask):
  a batch pads the rows to the longest along the sequence and stacks them; type ids and masks the processor
  returns repeat their last token over the padding, as Mllama's processor extends each image's mask to the end
  of the padded row;
- per row (`[1, ...]` whose second axis counts the row's images: Mllama's `[1, images, tiles, ...]` pixels and
  aspect ratios): a batch pads them to the largest and stacks them;
- per media item (`[items, ...]`: `[images, 3, H, W]` pixels, Qwen2-VL's patches and grids, Pixtral's image
  sizes, audio features): a batch concatenates them along the first axis, padded with zeros where the later
  dimensions differ (Pixtral's model crops each image back with `image_sizes`).
A row without a tensor (a text-only row among rows with images) contributes the pad value where its layout
needs an entry, and nothing otherwise.

Packing several rows into one sequence (`BatchRule.concat`) uses the same layouts: per-token tensors are
concatenated along the sequence, per-row tensors along their images, per-item tensors along their items. A
per-token tensor with more dimensions (Mllama's cross-attention mask, `[1, L, images, tiles]`) points at the
row's own images with its third: each row's block starts after the previous rows' images there too.

Example:
    >>> rule = BatchRule(batching=Batching.PER_TOKEN, pad=0)
    >>> rule.stack([torch.tensor([[1, 2, 3]]), torch.tensor([[4]])]).tolist()
    [[1, 2, 3], [4, 0, 0]]
    >>> rule.concat([torch.tensor([[1, 2, 3]]), torch.tensor([[4]])], lengths=[3, 1]).tolist()
    [[1, 2, 3, 4]]
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Sequence

import torch

from vlmdata.labels import IGNORE_INDEX
from vlmdata.pixels import PixelStorage


if hasattr(enum, "StrEnum"):
    StrEnum = enum.StrEnum
else:  # Python 3.10: the same, a member is its value wherever a string is used

    class StrEnum(str, enum.Enum):
        __str__ = str.__str__
        __format__ = str.__format__


class Batching(StrEnum):
    """Which axis of a model input says whose it is, which decides how rows merge."""

    PER_TOKEN = "per_token"  # [1, L, ...]: one entry per token of the row
    PER_ROW = "per_row"  # [1, ...]: one entry for the whole row (Mllama's [1, images, tiles, ...])
    PER_ITEM = "per_item"  # [items, ...]: one entry per image, patch or audio clip of the row


class Padding(StrEnum):
    """What fills the room a batch adds to a row."""

    VALUE = "value"  # the rule's pad value
    REPEAT_LAST = "repeat_last"  # along the sequence, the row's last token; the pad value elsewhere
    # Zeros, but every image, padded ones too, keeps its first tile, as Mllama's processor pads its
    # aspect_ratio_mask: no image is then masked out entirely.
    FIRST_TILE = "first_tile"


@dataclass(frozen=True, kw_only=True)
class BatchRule:
    """How one model input is merged across rows: into a batch (`stack`) or into one packed row (`concat`).

    Attributes:
        batching: the input's layout.
        pad: the value padding holds (the pad token for `input_ids`, -100 for `labels`, else 0).
        padding: how padding is filled.
        pixels: for pixels stored as codes, their storage: rows' codes are decoded before a merge that pads them.
    """

    batching: Batching
    pad: int | float = 0
    padding: Padding = Padding.VALUE
    pixels: PixelStorage | None = None

    def stack(self, tensors: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """The rows' tensors (None for a row without it) as one batch."""
        tensors = self._mergeable(tensors)
        if self.batching is Batching.PER_ITEM:
            merged = concat_padded([tensor for tensor in tensors if tensor is not None])
        else:
            merged = stack_padded(tensors, self.pad, repeat_last=self.padding is Padding.REPEAT_LAST)
        return self._fill_first_tile(merged)

    def concat(self, tensors: Sequence[torch.Tensor | None], lengths: Sequence[int]) -> torch.Tensor:
        """The rows' tensors (None for a row without it) as the tensor of one row holding them all in order.

        Args:
            lengths: each row's number of tokens: a row without a per-token tensor fills its stretch of the
                sequence with the pad value.
        """
        tensors = self._mergeable(tensors)
        if self.batching is Batching.PER_TOKEN:
            blocks = [
                tensor if tensor is not None else self._no_tokens(tensors, length)
                for tensor, length in zip(tensors, lengths)
            ]
            merged = place_blocks(blocks, along=(1, 2) if blocks[0].ndim > 2 else (1,), pad=self.pad)
        else:
            present = [tensor for tensor in tensors if tensor is not None]
            merged = place_blocks(present, along=(1,) if self.batching is Batching.PER_ROW else (0,), pad=self.pad)
        return self._fill_first_tile(merged)

    def _mergeable(self, tensors: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
        if self.pixels is None:
            return list(tensors)
        present = [tensor for tensor in tensors if tensor is not None]
        same_shape = len({tuple(tensor.shape[1:]) for tensor in present}) == 1
        return self.pixels.mergeable(tensors, adds_padding=self.batching is not Batching.PER_ITEM or not same_shape)

    def _fill_first_tile(self, merged: torch.Tensor) -> torch.Tensor:
        if self.padding is Padding.FIRST_TILE:
            merged[..., 0] = 1
        return merged

    def _no_tokens(self, tensors: list[torch.Tensor | None], length: int) -> torch.Tensor:
        """The per-token tensor of a row without it: `length` tokens, no media."""
        like = next(tensor for tensor in tensors if tensor is not None)
        return torch.full((1, length, *[0] * (like.ndim - 2)), self.pad, dtype=like.dtype)


def token_rules(pad_token_id: int) -> dict[str, BatchRule]:
    """The rules of the inputs every row has, besides the tensors of its layout."""
    return {
        "input_ids": BatchRule(batching=Batching.PER_TOKEN, pad=pad_token_id),
        "attention_mask": BatchRule(batching=Batching.PER_TOKEN, pad=0),
        "labels": BatchRule(batching=Batching.PER_TOKEN, pad=IGNORE_INDEX),
    }


def stack_padded(tensors: Sequence[torch.Tensor | None], pad: int | float, repeat_last: bool = False) -> torch.Tensor:
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


def concat_padded(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-item tensors concatenated along the first dimension, zero-padded where later dimensions differ."""
    shape = [max(tensor.shape[dim] for tensor in tensors) for dim in range(1, tensors[0].ndim)]
    if all(list(tensor.shape[1:]) == shape for tensor in tensors):
        return torch.cat(tensors)
    return place_blocks(tensors, along=(0,), pad=0)


def place_blocks(tensors: Sequence[torch.Tensor], along: tuple[int, ...], pad: int | float) -> torch.Tensor:
    """Tensors laid one after the other along each dimension of `along` (every one starts where the previous
    ends, in all of them at once), padded with `pad` at the end of the other dimensions."""
    ndim = tensors[0].ndim
    shape = [
        sum(tensor.shape[dim] for tensor in tensors) if dim in along else max(tensor.shape[dim] for tensor in tensors)
        for dim in range(ndim)
    ]
    out = torch.full(shape, pad, dtype=tensors[0].dtype)
    start = [0] * ndim
    for tensor in tensors:
        out[tuple(slice(start[dim], start[dim] + tensor.shape[dim]) for dim in range(ndim))] = tensor
        for dim in along:
            start[dim] += tensor.shape[dim]
    return out
