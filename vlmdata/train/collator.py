"""Batches of model inputs from token shard rows: padding and stacking only, never an image processor.

Each row is rebuilt by `vlmdata.shards.model_inputs` (which replays the stored pixel codes into the
processor's exact floats) and the rows are merged the way the processor itself batches, as each tensor's spec
declares (`TensorLayout.batch_rules`, `vlmdata.batching`): per-token tensors padded along the sequence and
stacked, per-row tensors (Mllama's `[1, images, tiles, ...]`) padded and stacked, per-image or per-clip tensors
concatenated along their first axis. Padding is on the right: `input_ids` get the pad token, `labels` get
-100, everything else 0, with the exceptions the rules declare.

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

from vlmdata.shards import TensorLayout, arrow_row, model_inputs


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
        decode_pixels: with False, pixel codes that merge without padding stay codes, for `PixelDecoding`.
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
        batch = {}
        for name, rule in self.layout.batch_rules(self.pad_token_id).items():
            tensors = [row.get(name) for row in inputs]
            if all(tensor is None for tensor in tensors):
                continue
            batch[name] = rule.stack(tensors)
            if self.float_dtype is not None and batch[name].is_floating_point():
                batch[name] = batch[name].to(self.float_dtype)
        return batch


class PixelDecoding:
    """A forward pre-hook that turns pixel codes in the model's inputs into the processor's floats, on the
    device the inputs are on, in `dtype` (by default the processor's own dtype, as `model_inputs` rebuilds it).

    Example:
        >>> model.register_forward_pre_hook(PixelDecoding(layout, torch.bfloat16), with_kwargs=True)  # doctest: +SKIP
    """

    def __init__(self, layout: TensorLayout, dtype: torch.dtype | None = None):
        self.pixels = {spec.name: spec.pixels for spec in layout.tensors if spec.pixels is not None}
        self.dtype = dtype

    def __call__(self, module, args, kwargs):
        for name, pixels in self.pixels.items():
            codes = kwargs.get(name)
            if codes is not None and codes.dtype == torch.uint8:
                values = pixels.decode_tensor(codes)
                kwargs[name] = values if self.dtype is None else values.to(self.dtype)
        return args, kwargs
